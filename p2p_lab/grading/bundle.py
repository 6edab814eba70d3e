"""Release: the solution markers, student notebooks (solutions stubbed) and the two bundles
written from the master notebooks, ``student/`` and ``autograder/``."""
from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

from .notebooks import BEGIN, END, QUESTION_ID, REPO_ROOT, cell_source, question_of
from .parent import HIDDEN_VISIBILITY, check_visibility, record_timings


def strip_solutions(source: str, question: str, body: str | None = None) -> str:
    """Replace each ``BEGIN``..``END`` block (markers included) with a stub at the same indentation:
    ``raise NotImplementedError(...)``, or the lines of ``body`` (a broken solution, for tests)."""
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.split("\n"), 1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"line {number}: a second BEGIN marker before END")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            stub = body if body is not None else f'raise NotImplementedError("{question}: write your solution here")'
            out += [indent + b for b in stub.split("\n")]
        elif marker == END:
            if not inside:
                raise ValueError(f"line {number}: an END marker without BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("a BEGIN marker without END")
    return "\n".join(out)


def strip_answers(source: str) -> str:
    """A checks module as the student version holds it: the body of every function marked
    ``@answer`` replaced by ``raise RecordedOnly()``, and each ``Mistake``'s ``compute`` and each
    ``run_check``'s reference replaced by ``None`` (their outputs are recorded: ``checks._core``)."""
    import ast

    data = source.encode()
    starts = [0]
    for line in data.split(b"\n"):
        starts.append(starts[-1] + len(line) + 1)

    def offset(line: int, col: int) -> int:  # ast columns count UTF-8 bytes
        return starts[line - 1] + col

    spans = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                isinstance(d, ast.Name) and d.id == "answer" for d in node.decorator_list):
            first = node.body[0]
            if first.lineno == node.lineno:
                raise ValueError(f"line {node.lineno}: an @answer function needs its body on its own lines")
            indent = " " * first.col_offset
            spans.append((offset(first.lineno, 0), offset(node.end_lineno, node.end_col_offset),
                          f"{indent}raise RecordedOnly()  # recorded when the course was released"))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            position = {"Mistake": (1, "compute"), "run_check": (2, "reference")}.get(node.func.id)
            if position is None:
                continue
            index, keyword = position
            arg = node.args[index] if len(node.args) > index else next(
                (k.value for k in node.keywords if k.arg == keyword), None)
            if arg is not None:
                spans.append((offset(arg.lineno, arg.col_offset), offset(arg.end_lineno, arg.end_col_offset),
                              "None"))
    kept: list = []
    for span in sorted(spans, key=lambda x: (x[0], -x[1])):  # drop spans inside a replaced one
        if not kept or span[0] >= kept[-1][1]:
            kept.append(span)
    for start, end, text in reversed(kept):
        data = data[:start] + text.encode() + data[end:]
    out = data.decode()
    if any(text != "None" for _, _, text in kept):
        if "from ._core import " not in out:
            raise ValueError("a checks module with @answer functions must import from ._core")
        out = out.replace("from ._core import ", "from ._core import RecordedOnly, ", 1)
    return out


def student_notebook(nb, name: str = "notebook"):
    """The student version of a master notebook (a copy): solutions stubbed, outputs cleared."""
    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        src = cell_source(cell)
        if BEGIN in src or END in src:
            question = question_of(cell)
            if not question or not QUESTION_ID.match(question):
                raise ValueError(f"{name}, cell {i}: an exercise cell needs metadata "
                                 f'{{"p2p_lab": {{"question": "<question_id>"}}}}, got {question!r}')
            try:
                cell.source = strip_solutions(src, question)
            except ValueError as err:
                raise ValueError(f"{name}, cell {i}: {err}") from None
        cell.outputs, cell.execution_count = [], None
    return nb


def _strip_checks(folder: Path) -> None:
    """The student's checks: expected values recorded (by this package's checks, live), the code
    that computes them stripped (:func:`strip_answers`)."""
    from ..checks import EXPECTED, record_expectations, save_expectations  # here: checks load torch

    save_expectations(record_expectations(), folder / EXPECTED.name)
    for path in sorted(folder.glob("*.py")):
        if path.name not in ("__init__.py", "_core.py"):
            path.write_text(strip_answers(path.read_text()))


def _copy_tree(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
    elif src.exists():
        shutil.copy2(src, dst)


def point_at_repo(nb, name: str, repo: str):
    """The notebook's Colab badge and Colab install line rewritten for the GitHub repository ``repo``."""
    from .. import colab_url, install_spec

    old = (colab_url(name), install_spec())
    new = (colab_url(name, repo), install_spec(repo))
    for cell in nb.cells:
        for a, b in zip(old, new):
            cell.source = cell.source.replace(f"({a})", f"({b})").replace(f'"{a}"', f'"{b}"')
    return nb


def release(out_dir, notebooks_dir=None, repo_root=None, repo: str | None = None, timings: bool = True,
            jobs: int = 1, visibility: str = HIDDEN_VISIBILITY) -> Path:
    """Write ``out_dir/student`` and ``out_dir/autograder`` from the master notebooks.

    ``student/``: ``notebooks/`` (stubs in place of solutions, outputs cleared), the ``p2p_lab``
    package, ``data/`` (the shipped model), ``pyproject.toml`` and a README (``pip install -e .``).
    ``autograder/``: the same package and data, ``tests/hidden/``, and Gradescope's
    ``setup.sh`` / ``run_autograder`` with a README. ``repo``: the GitHub repository ("owner/name")
    the student version will live in; its notebooks' Colab badges and install lines point there
    (default: ``p2p_lab.COLAB_REPO``). ``timings``: grade the master notebooks with the bundle
    (``jobs`` at a time; minutes) and record their cells' and hidden tests' times in its
    ``tests/hidden/timings.json``, from which grading sets tight limits (:func:`.record_timings`);
    a master that does not score full marks stops the release. ``visibility``: when Gradescope
    shows students the hidden tests' results (``run_autograder`` grades with it; default after the
    due date; a grading's own ``--visibility`` overrides it). Returns ``out_dir``.
    """
    import nbformat

    check_visibility(visibility)
    root = Path(repo_root or REPO_ROOT)
    notebooks_dir = Path(notebooks_dir or root / "notebooks")
    out = Path(out_dir)
    masters = sorted(notebooks_dir.glob("*.ipynb"))
    if not masters:
        raise FileNotFoundError(f"no notebooks in {notebooks_dir}")
    from ..checks.registry import registry_problems

    problems = registry_problems(notebooks_dir)
    if problems:  # else the student version's checks would fail only when a student runs them
        raise ValueError("the checks registry does not match the notebooks:\n  " + "\n  ".join(problems))
    student, grader = out / "student", out / "autograder"
    for d in (student, grader):
        if d.exists():
            shutil.rmtree(d)
    versions = {p.name: student_notebook(nbformat.read(p, as_version=4), p.name) for p in masters}
    if repo is not None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", repo):
            raise ValueError(f"repo must be a GitHub repository as owner/name, got {repo!r}")
        versions = {name: point_at_repo(nb, name, repo) for name, nb in versions.items()}
    (student / "notebooks").mkdir(parents=True)
    for name, nb in versions.items():
        nbformat.write(nb, student / "notebooks" / name)
    for target in (student, grader):
        for part in ("p2p_lab", "data", "pyproject.toml", "README.md", "LICENSE"):
            _copy_tree(root / part, target / part)
    _strip_checks(student / "p2p_lab" / "checks")
    hidden = grader / "tests" / "hidden"
    hidden.mkdir(parents=True)
    for p in sorted((root / "tests" / "hidden").glob("hidden_*.py")):
        shutil.copy2(p, hidden / p.name)
    _write_bundle_files(student, grader, sorted(versions), visibility)
    if timings:
        record_timings(masters, hidden, jobs=jobs)
    return out


_STUDENT_README = """# p2p_lab: student version

Install once (a CPU-only torch first on a laptop), then open the notebooks:

    pip install -e ".[lab]"
    jupyter lab notebooks/

Each exercise cell raises `NotImplementedError` until you write your solution; the cell after it
runs a public check. Submit the notebook file (any file name).
"""

_GRADER_README = """# p2p_lab autograder

Local grading (from this folder):

    pip install -e ".[lab]"
    python -m p2p_lab.grading grade SUBMISSION.ipynb --json results.json
    python -m p2p_lab.grading grade SUBMISSIONS_DIR --json results_dir/   # one JSON per notebook

Gradescope: zip this folder's contents (setup.sh and run_autograder at the top level) and upload
it as the autograder; `run_autograder` grades /autograder/submission into
/autograder/results/results.json. Hidden tests: tests/hidden/hidden_<assignment>.py.
Notebooks graded: {names}.

Results: each question's result carries Gradescope's `visibility`: `{visibility}` for the hidden
tests (set at release, `python -m p2p_lab release OUT --visibility ...`, or in run_autograder's
`--visibility`: hidden, after_due_date, after_published or visible); a question marked
`"public": True` in its QUESTIONS is always visible.

## Memory and time to give the autograder

Gradescope's default container has 0.5 CPU and 768 MB. Measured grading each notebook's master
solution on one CPU with one torch thread (`python benchmarks/grading_memory.py` in the course
repository: `python -m p2p_lab.grading grade`, as run_autograder runs it; peak resident memory of
the grading parent and the grading process together, sampled every 0.1 s; the larger of two
runs; times: the range of three runs on a machine shared with other jobs):

| notebook | peak memory | time, one CPU |
|---|---|---|
| 01_attention | 589 MB | 19-45 s |
| 02_cross_attention | 579 MB | 36-57 s |
| 03_ddpm | 728 MB | 25-88 s |
| 04_ldm_sampling | 661 MB | 48-121 s |
| 05_prompt_to_prompt | 822 MB | 121-154 s |
| 06_real_images | 778 MB | 98-145 s |

(Notebooks 05 and 06 re-measured after their new exercises, one run each on one CPU: 775 MB in 51 s and
778 MB in 49 s; and 04-06 on the shipped model with appearance words: 662 MB in 23 s, 754 MB in 54 s,
777 MB in 53 s. The table keeps the largest peak measured.)

Notebooks 01-04 fit the default 768 MB (03 with 40 MB to spare); 05 and 06 do not
(MB here: 2^20 bytes): **set the autograder's
memory to at least 1 GB** (any CPU setting works: the grading process uses as many torch threads
as the container's CPU quota allows, at least one). Time: half a CPU takes about twice the times
above, and a broken submission may use the grader's own limits (ten times the master's time per
cell, 20 minutes per submission): **set the autograder timeout to 25 minutes**, so that the grader
always writes its results before Gradescope stops it.
"""

_RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope entry point: grade the submitted notebook into results.json.
set -u
cd /autograder/source
mkdir -p /autograder/results
# p2p_lab.grading, not p2p_lab: the grading parent then loads no torch (memory: see README.md)
python3 -m p2p_lab.grading grade /autograder/submission --json /autograder/results/results.json \\
    --hidden /autograder/source/tests/hidden --visibility {visibility}
"""

_SETUP = """#!/usr/bin/env bash
# Gradescope set-up: CPU-only torch first, then the package with its dependencies.
set -eu
pip3 install --index-url https://download.pytorch.org/whl/cpu torch
pip3 install -e "/autograder/source[lab]"
"""


def _write_bundle_files(student: Path, grader: Path, names: list[str], visibility: str = HIDDEN_VISIBILITY) -> None:
    (student / "README.md").write_text(_STUDENT_README)
    (grader / "README.md").write_text(_GRADER_README.format(names=", ".join(names), visibility=visibility))
    for name, text in (("run_autograder", _RUN_AUTOGRADER.format(visibility=visibility)), ("setup.sh", _SETUP)):
        (grader / name).write_text(text)
        (grader / name).chmod(0o755)
