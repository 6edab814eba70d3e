"""Every course notebook follows the shared conventions (opening, metadata, exercises, outputs)."""
import re
from pathlib import Path

import nbformat
import pytest

from p2p_lab import colab_url, install_spec
from p2p_lab.grading import BEGIN, END, _questions

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
HIDDEN = ROOT / "tests" / "hidden"
SETUP_MARK = 'if "google.colab" in sys.modules:'


@pytest.fixture(params=NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def notebook(request):
    return request.param, nbformat.read(request.param, as_version=4)


def test_there_are_notebooks():
    assert {"01_attention.ipynb", "02_cross_attention.ipynb"} <= {p.name for p in NOTEBOOKS}


def test_outputs_stripped_except_checked_cells(notebook):
    path, nb = notebook
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" not in cell.source:
            assert cell.outputs == [] and cell.execution_count is None, f"{path.name} cell {i} keeps outputs"
        if cell.cell_type == "code" and "NBVAL_CHECK_OUTPUT" in cell.source:
            for out in cell.outputs:
                assert out.output_type in ("stream", "execute_result"), f"{path.name} cell {i}: {out.output_type}"
                assert "image/png" not in out.get("data", {})


def test_opening(notebook):
    path, nb = notebook
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    opening = "\n".join(c.source for c in nb.cells[:3] if c.cell_type == "markdown")
    assert "What you will learn" in opening
    badges = re.findall(r"\[!\[Open In Colab\]\([^)]*\)\]\(([^)]*)\)", "\n".join(
        c.source for c in nb.cells if c.cell_type == "markdown"))
    assert badges == [colab_url(path.name)]


def test_one_setup_cell(notebook):
    path, nb = notebook
    code = [c for c in nb.cells if c.cell_type == "code"]
    setup = [c for c in code if SETUP_MARK in c.source]
    assert len(setup) == 1 and setup[0] is code[0], f"{path.name}: the setup cell must be the first code cell"
    for line in ("device = default_device()", "torch.manual_seed(0)", 'print("device:", device)',
                 f'    !pip -q install "{install_spec()}"'):
        assert line in setup[0].source


def test_no_widget_state_is_saved(notebook):
    path, nb = notebook
    assert "widgets" not in nb.metadata, f"{path.name} keeps widget state (progress bars of a past run)"


def test_metadata(notebook):
    path, nb = notebook
    assert nb.metadata["p2p_lab"]["assignment"] == path.stem
    assert nb.metadata["kernelspec"]["name"] == "python3"


def test_exercises_match_hidden_tests(notebook):
    path, nb = notebook
    hidden = HIDDEN / f"hidden_{path.stem}.py"
    exercises = [c for c in nb.cells if c.cell_type == "code" and "exercise" in c.metadata.get("tags", [])]
    marked = [c for c in nb.cells if c.cell_type == "code" and (BEGIN in c.source or END in c.source)]
    assert [id(c) for c in exercises] == [id(c) for c in marked], f"{path.name}: exercise tags vs markers"
    if not exercises:
        return
    assert hidden.exists(), f"{path.name} has exercises but no {hidden.name}"
    questions = _questions(hidden)
    seen = []
    for cell in exercises:
        lines = [line.strip() for line in cell.source.splitlines()]
        assert lines.count(BEGIN) == lines.count(END) >= 1
        q = cell.metadata["p2p_lab"]["question"]
        assert q in questions, f"{path.name}: question {q!r} is not in {hidden.name}"
        name = questions[q]["name"]
        assert f"def {name}(" in cell.source or f"class {name}" in cell.source
        seen.append(q)
    assert sorted(seen) == sorted(questions), f"{path.name}: every hidden question has one exercise cell"
    if path.stem in ("01_attention", "02_cross_attention"):
        assert len(seen) >= 2


def _unshown_figures(source: str) -> list[str]:
    """Calls of viz.plot_* whose figure is dropped: the course's figures are matplotlib Figures that
    Jupyter shows only as a cell's last expression or through display(), so one made mid-cell and
    neither assigned nor displayed never appears."""
    import ast

    code = "\n".join("" if line.lstrip().startswith(("!", "%")) else line for line in source.splitlines())
    try:
        tree = ast.parse(code)
    except SyntaxError:  # the Colab set-up cell's "!pip" line: nothing drawn there
        return []
    dropped = []

    def walk(stmts, last_shows):
        for k, s in enumerate(stmts):
            shown = last_shows and k == len(stmts) - 1
            if isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and not shown:
                name = ast.unparse(s.value.func)
                if re.search(r"(^|\.)plot_\w+$", name):
                    dropped.append(f"line {s.lineno}: {name}")
            if not isinstance(s, (ast.FunctionDef, ast.ClassDef)):
                for part in ("body", "orelse", "finalbody"):
                    walk(getattr(s, part, []) or [], False)

    walk(tree.body, True)
    return dropped


def test_the_figure_finder_finds_a_dropped_figure():
    assert _unshown_figures("fig = viz.plot_images(a)\nviz.plot_images(b)\nx = 1") == ["line 2: viz.plot_images"]
    assert _unshown_figures("if ok:\n    viz.plot_curve(a)\nelse:\n    display(viz.plot_curve(b))") == \
        ["line 2: viz.plot_curve"]
    assert _unshown_figures("x = 1\nviz.plot_images(a)") == []  # the last expression is shown


def test_every_figure_made_is_shown(notebook):
    path, nb = notebook
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not _unshown_figures(cell.source), f"{path.name} cell {i}: {_unshown_figures(cell.source)} " \
                "draws a figure nobody sees: wrap it in display(...) or make it the cell's last line"
