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
