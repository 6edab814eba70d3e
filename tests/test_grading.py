"""Release and autograding: stubs, forbid, the grader on every notebook and on hostile submissions.

Grading executes a notebook in a separate process, so these tests are the slow ones of the suite:
the master and student versions of every notebook are graded once (module fixture, in parallel),
and hostile behaviour is tested on small synthetic notebooks: most against a pure-Python hidden
test file (fast to start), one against the real 01_attention hidden tests.
"""
import dataclasses
import json
import operator
import shutil
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from p2p_lab import grading
from p2p_lab.forbidding import register_namespace, unregister_namespace
from p2p_lab.grading import BEGIN, END, ForbiddenCall, Limits, forbid, parent

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
FAST = Limits(cell_s=4, question_s=4, startup_s=120, total_s=400)


def _notebook(path, cells, assignment):
    nb = new_notebook(cells=[new_code_cell(textwrap.dedent(c).strip("\n")) for c in cells])
    if assignment:
        nb.metadata["p2p_lab"] = {"assignment": assignment}
    nbformat.write(nb, path)
    return path


# --- release -----------------------------------------------------------------------------------

def test_strip_solutions_keeps_indentation_and_the_rest():
    src = f"def f(x):\n    y = 1\n    {BEGIN}\n    return x + y\n    {END}\n\nprint(f)"
    out = grading.strip_solutions(src, "q1")
    assert out == 'def f(x):\n    y = 1\n    raise NotImplementedError("q1: write your solution here")\n\nprint(f)'
    two = f"{BEGIN}\na = 1\n{END}\nb = 2\n  {BEGIN}\n  c = 3\n  {END}"
    assert grading.strip_solutions(two, "q").count("NotImplementedError") == 2
    body = grading.strip_solutions(src, "q1", "while True:\n    pass")  # a broken solution, for tests
    assert body == 'def f(x):\n    y = 1\n    while True:\n        pass\n\nprint(f)'
    for bad in (f"{BEGIN}\nx", f"x\n{END}", f"{BEGIN}\n{BEGIN}\n{END}"):
        with pytest.raises(ValueError):
            grading.strip_solutions(bad, "q")


def test_student_notebook_needs_question_metadata():
    nb = new_notebook(cells=[new_code_cell(f"def f():\n    {BEGIN}\n    pass\n    {END}")])
    with pytest.raises(ValueError, match="question"):
        grading.student_notebook(nb, "x.ipynb")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    from p2p_lab.__main__ import main

    assert main(["release", str(out), "--no-timings"]) == 0  # through the command line (timings: below)
    return out


def test_release_layout(released):
    student, grader = released / "student", released / "autograder"
    assert sorted(p.name for p in (student / "notebooks").glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    for target in (student, grader):
        assert (target / "p2p_lab" / "attention.py").exists()
        assert (target / "data" / "shapes-ldm" / "model_index.json").exists()
        assert (target / "pyproject.toml").exists()
    assert (grader / "run_autograder").exists() and (grader / "setup.sh").exists()
    run = (grader / "run_autograder").read_text()  # a grading parent without torch, hidden results later
    assert "python3 -m p2p_lab.grading grade " in run and "--visibility after_due_date" in run
    readme = " ".join((grader / "README.md").read_text().split())  # what to give Gradescope, measured
    assert "set the autograder's memory to at least 1 GB" in readme and "timeout to 25 minutes" in readme
    hidden = sorted(p.name for p in (ROOT / "tests" / "hidden").glob("hidden_*.py"))
    assert sorted(p.name for p in (grader / "tests" / "hidden").glob("*.py")) == hidden


def test_student_release_has_no_solutions_and_no_hidden_tests(released):
    student = released / "student"
    hidden_texts = [p.read_text() for p in (ROOT / "tests" / "hidden").glob("hidden_*.py")]
    for path in student.rglob("*"):
        if not path.is_file():
            continue
        assert not path.name.startswith("hidden_"), path
        if path.suffix in (".py", ".ipynb", ".md", ".txt", ".toml", ".json", ".sh", ""):
            text = path.read_text(errors="replace")
            lines = {line.strip().strip('",').replace("\\n", "").strip() for line in text.splitlines()}
            assert BEGIN not in lines and END not in lines, f"solution marker in {path}"
            if path.suffix == ".ipynb":
                assert BEGIN not in text and END not in text, f"solution marker in {path}"
            assert "tests/hidden" not in text or path.suffix == ".py", path
            for hidden in hidden_texts:
                assert hidden not in text
    for master in NOTEBOOKS:
        nb = nbformat.read(master, as_version=4)
        stub = nbformat.read(student / "notebooks" / master.name, as_version=4)
        assert len(nb.cells) == len(stub.cells)
        for cell, scell in zip(nb.cells, stub.cells):
            if cell.cell_type == "code":
                assert scell.outputs == [] and scell.execution_count is None
            if BEGIN in cell.source:
                solution = cell.source.split(BEGIN, 1)[1].split(END, 1)[0]
                body = "\n".join(line for line in solution.splitlines() if line.strip())
                assert body.strip() and body not in scell.source
                assert f'raise NotImplementedError("{cell.metadata["p2p_lab"]["question"]}' in scell.source
            else:
                assert scell.source == cell.source


def test_release_points_the_notebooks_at_the_course_repository(tmp_path):
    from p2p_lab import COLAB_REPO, colab_url, install_spec
    from p2p_lab.__main__ import main

    assert main(["release", str(tmp_path), "--repo", "my-course/p2p-2027", "--no-timings"]) == 0
    for path in sorted((tmp_path / "student" / "notebooks").glob("*.ipynb")):
        text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
        assert f"({colab_url(path.name, 'my-course/p2p-2027')})" in text
        assert f'!pip -q install "{install_spec("my-course/p2p-2027")}"' in text
        assert COLAB_REPO not in text, path.name
    with pytest.raises(ValueError, match="owner/name"):
        grading.release(tmp_path / "again", repo="https://github.com/my-course")


def test_student_checks_hold_no_answer(released):
    """The student's checks keep their cases and hints and compare with recorded values: every
    @answer body, Mistake compute and run_check reference is gone, and no line of a master
    solution appears in them; the autograder keeps the live checks (its hidden tests need them)."""
    import ast

    student, grader = released / "student" / "p2p_lab" / "checks", released / "autograder" / "p2p_lab" / "checks"
    assert (student / "expected.safetensors").exists() and not (grader / "expected.safetensors").exists()
    solution_lines = set()
    for master in NOTEBOOKS:
        for cell in nbformat.read(master, as_version=4).cells:
            inside = False
            for line in cell.source.split("\n"):
                if line.strip() in (BEGIN, END):
                    inside = line.strip() == BEGIN
                elif inside and len(line.strip()) >= 24 and not line.strip().startswith("#"):
                    solution_lines.add(line.strip())
    assert len(solution_lines) > 40
    for path in sorted(student.glob("*.py")):
        text = path.read_text()
        assert (grader / path.name).read_text() == (ROOT / "p2p_lab" / "checks" / path.name).read_text()
        if path.name in ("__init__.py", "_core.py", "registry.py"):  # no answer in them: kept as is
            continue
        assert text != (ROOT / "p2p_lab" / "checks" / path.name).read_text(), path.name
        found = [line for line in solution_lines if line in text]
        assert not found, (path.name, found)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and any(getattr(d, "id", "") == "answer" for d in node.decorator_list):
                assert len(node.body) == 1 and isinstance(node.body[0], ast.Raise), (path.name, node.name)
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("Mistake", "run_check"):
                arg = node.args[1 if node.func.id == "Mistake" else 2]
                assert isinstance(arg, ast.Constant) and arg.value is None, (path.name, ast.unparse(node)[:80])


def test_student_checks_pass_the_master_solutions(released, tmp_path):
    """In the student version (its own package first on the path), each exercise cell with the
    master's solution and the check cell after it: every check passes, from recorded values; the
    stubs of a fresh release fail with 'not implemented'. (.ci/colab_home.py does the same with the
    student version installed among Colab's older libraries.)"""
    from p2p_lab.testing import check_verdicts, checks_notebook, execute_notebook

    student = released / "student"
    for master in NOTEBOOKS:
        n = sum(1 for c in nbformat.read(master, as_version=4).cells if c.metadata.get("p2p_lab", {}).get("question"))
        for kind, source in (("master", master), ("stub", student / "notebooks" / master.name)):
            path = tmp_path / f"{kind}_{master.name}"
            nbformat.write(checks_notebook(nbformat.read(source, as_version=4)), path)
            done = execute_notebook(path, student / "notebooks", env={"PYTHONPATH": str(student)})
            v = check_verdicts(done)
            assert v["package"] == str(student / "p2p_lab" / "__init__.py"), v["printed"][:500]
            want = {"passed": n, "not_implemented": 0} if kind == "master" else {"passed": 0, "not_implemented": n}
            assert {k: v[k] for k in want} == want and v["failed"] == 0, (master.name, kind, v["printed"])


def test_student_wheel_carries_the_recorded_expectations(released, tmp_path):
    """Colab installs the student repository as a package (not editable): its wheel must carry them."""
    import subprocess
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-q", "-w",
                    str(tmp_path), str(released / "student")], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = z.read("p2p_lab/checks/expected.safetensors")
    assert shipped == (released / "student" / "p2p_lab" / "checks" / "expected.safetensors").read_bytes()


def _first_exercise_replaced(nb, body: str):
    """The notebook with its first exercise's solution replaced by ``body`` (indented alike)."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and BEGIN in c.source)
    cell.source = grading.strip_solutions(cell.source, "", body)
    return nb


def test_timed_release_gives_a_hanging_exercise_a_short_limit(released, tmp_path):
    """record_timings (what release runs) writes the master's cell and test times; a submission's
    cells with a master cell's source then get factor x that time (at least floor_s), its own new
    cells the default; a master that loses points stops it."""
    from p2p_lab.grading.child import cell_key

    master = ROOT / "notebooks" / "01_attention.ipynb"
    hidden = tmp_path / "hidden"
    shutil.copytree(released / "autograder" / "tests" / "hidden", hidden)
    limits = Limits(cell_s=120, question_s=60, floor_s=5, factor=10)
    timings = grading.record_timings([master], hidden, limits)
    assert json.loads((hidden / grading.TIMINGS).read_text()) == timings
    nb = nbformat.read(master, as_version=4)
    code = [cell_key(c.source) for c in nb.cells if c.cell_type == "code"]
    cells = timings["01_attention"]["cells"]
    assert set(cells) == set(code) and all(0 <= t < 60 for t in cells.values())
    assert set(timings["01_attention"]["questions"]) == {"attention", "multi_head_attention"}

    hanging = _first_exercise_replaced(nb, "while True:\n    pass")
    hanging.cells.append(new_code_cell("import time\ntime.sleep(7)"))  # a new cell: the default limit
    nbformat.write(hanging, tmp_path / "hanging.ipynb")
    r = grading.grade_notebook(tmp_path / "hanging.ipynb", hidden, limits)
    assert _scores(r)["attention"] == 0
    assert r["score"] == sum(t["max_score"] for t in r["tests"]) - 2, r  # the other question passes
    stopped = [line for line in r["output"].splitlines() if "took longer than" in line]
    assert len(stopped) == 1 and "took longer than 5 s" in stopped[0], r["output"]
    assert "ten times what the course's own solution takes" in stopped[0]
    attention = next(t for t in r["tests"] if t["name"].startswith("attention"))
    assert "stopped at the 5 s limit of cell" in attention["output"], attention
    untimed = dataclasses.replace(limits, timed=False, cell_s=8)  # every cell the default, as before
    r = grading.grade_notebook(tmp_path / "hanging.ipynb", hidden, untimed)
    assert "took longer than 8 s and was stopped\n" in r["output"] + "\n", r["output"]

    raising = _first_exercise_replaced(nbformat.read(master, as_version=4), "raise RuntimeError('no')")
    (tmp_path / "raising").mkdir()
    nbformat.write(raising, tmp_path / "raising" / "01_attention.ipynb")
    with pytest.raises(ValueError, match="(?s)must score full marks.*attention"):
        grading.record_timings([tmp_path / "raising" / "01_attention.ipynb"], hidden, limits)


# --- forbid ------------------------------------------------------------------------------------

def test_forbid_catches_attribute_alias_and_captured_references():
    import p2p_lab.attention as att

    original = att.token_maps
    alias = att.token_maps
    ns = {"tm": att.token_maps}
    register_namespace(ns)
    try:
        def captured(f=att.token_maps):  # a reference taken before forbid: caught via its code
            return f(None, 1, 1)

        with pytest.raises(ForbiddenCall):
            with forbid("p2p_lab.attention.token_maps"):
                att.token_maps(None, 1, 1)
        for call in (lambda: ns["tm"](None, 1, 1), captured, lambda: alias(None, 1, 1)):
            with pytest.raises(ForbiddenCall, match="p2p_lab.attention.token_maps"):
                with forbid("p2p_lab.attention.token_maps"):
                    call()
    finally:
        unregister_namespace(ns)
    assert att.token_maps is original and ns["tm"] is original
    assert original.__code__.co_name == "token_maps"  # code restored


def test_forbid_builtin_and_swallowed_calls():
    def sneaky(a):
        try:
            return operator.neg(a)
        except BaseException:  # noqa: BLE001 - swallowing it does not help
            return -a

    with pytest.raises(ForbiddenCall):
        with forbid("operator.neg"):
            sneaky(3)
    assert operator.neg(3) == -3
    with forbid("operator.neg", "no_such_module.f", "operator.no_such_name"):
        assert operator.pos(3) == 3  # other functions still work; unknown names are ignored


def test_forbid_restores_on_errors_and_nests():
    import torch

    sdpa = torch.nn.functional.scaled_dot_product_attention
    with pytest.raises(ZeroDivisionError):
        with forbid("torch.nn.functional.scaled_dot_product_attention"):
            with forbid("torch.softmax"):
                pass
            assert torch.nn.functional.scaled_dot_product_attention is not sdpa  # outer still active
            1 / 0
    assert torch.nn.functional.scaled_dot_product_attention is sdpa


# --- assignment recognition --------------------------------------------------------------------

def test_find_assignment(tmp_path):
    hidden = ROOT / "tests" / "hidden"
    nb = new_notebook(cells=[new_code_cell("x = 1")])
    nb.metadata["p2p_lab"] = {"assignment": "02_cross_attention"}
    assert grading.find_assignment(nb, tmp_path / "my_homework.ipynb", hidden) == "02_cross_attention"
    bare = new_notebook(cells=[new_code_cell("def attention(Q, K, V): pass")])
    bare.cells[0].metadata["p2p_lab"] = {"question": "attention"}
    assert grading.find_assignment(bare, tmp_path / "renamed.ipynb", hidden) == "01_attention"
    with pytest.raises(ValueError, match="cannot tell"):
        grading.find_assignment(new_notebook(), tmp_path / "x.ipynb", hidden)


def test_gradescope_layout_with_no_notebook(tmp_path):
    (tmp_path / "submission").mkdir()
    result = grading.grade(tmp_path / "submission", tmp_path / "results" / "results.json")
    assert result["score"] == 0 and "no .ipynb" in result["output"]
    assert json.loads((tmp_path / "results" / "results.json").read_text())["tests"] == []


def test_unreadable_and_unknown_submissions(tmp_path):
    (tmp_path / "junk.ipynb").write_text("this is not json")
    result = grading.grade_notebook(tmp_path / "junk.ipynb")
    assert result["score"] == 0 and "not a readable" in result["output"]
    _notebook(tmp_path / "other.ipynb", ["x = 1"], "99_unknown")
    result = grading.grade_notebook(tmp_path / "other.ipynb")
    assert result["score"] == 0 and "no hidden tests" in result["output"]


# --- the grader on every notebook: master full marks, fresh student version zero -----------------

def _exercises_only(nb):
    """A released notebook cut down to what defines the student's functions: the set-up cell, the
    imports cell after it (if any) and the exercise cells (stubs in a fresh release, so they need
    nothing else). The demo cells are what makes a notebook slow; the master run executes them all."""
    code = [c for c in nb.cells if c.cell_type == "code"]
    head = code[:2] if code[1].source.lstrip().startswith(("%matplotlib", "import ", "from ")) else code[:1]
    nb.cells = head + [c for c in code if c.metadata.get("p2p_lab", {}).get("question")]
    return nb


@pytest.fixture(scope="module")
def graded(released, tmp_path_factory):
    """Grade every master notebook and every released student notebook (its exercises) once, two at
    a time."""
    folder = tmp_path_factory.mktemp("both")
    for nb in NOTEBOOKS:
        (folder / "master").mkdir(exist_ok=True)
        (folder / "student").mkdir(exist_ok=True)
        (folder / "master" / nb.name).write_bytes(nb.read_bytes())
        student = nbformat.read(released / "student" / "notebooks" / nb.name, as_version=4)
        nbformat.write(_exercises_only(student), folder / "student" / f"renamed_{nb.name}")
    limits = Limits(cell_s=300, question_s=120, total_s=1500)
    hidden = released / "autograder" / "tests" / "hidden"  # the bundle's copy
    results = grading.grade(folder, folder / "results", hidden, limits, jobs=2)
    return {Path(k).relative_to(folder).as_posix(): v for k, v in results.items()}, folder


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_master_gets_full_marks(graded, nb):
    results, _ = graded
    r = results[f"master/{nb.name}"]
    if not r["tests"]:
        pytest.skip(f"{nb.name} has no graded exercises")
    failures = [t for t in r["tests"] if t["score"] != t["max_score"]]
    assert not failures, (failures, r["output"])
    assert r["score"] == sum(t["max_score"] for t in r["tests"]) > 0


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_fresh_student_version_gets_zero(graded, nb):
    results, folder = graded
    r = results[f"student/renamed_{nb.name}"]
    assert r["score"] == 0
    for t in r["tests"]:
        assert "NotImplementedError" in t["output"] or "not implemented" in t["output"], t
    written = json.loads((folder / "results" / f"student__renamed_{nb.stem}.json").read_text())
    assert written["score"] == 0 and {"name", "score", "max_score", "output"} <= set(written["tests"][0])


# --- hostile submissions, on a fast pure-Python assignment ---------------------------------------

SYNTHETIC = '''
import math
import operator
from p2p_lab.grading import call_student, student_function

QUESTIONS = {"add": {"points": 1.0, "name": "add"}, "mul": {"points": 2.0, "name": "mul"},
             "neg": {"points": 1.0, "name": "neg"}}


def test_add(ns):
    assert call_student(student_function(ns, "add"), (), 2, 3) == 5, "add(2, 3) should be 5"


def test_mul(ns):
    got = call_student(student_function(ns, "mul"), (), 2.5, 4)
    assert math.isclose(got, 10.0), f"mul(2.5, 4) gave {got}"


def test_neg(ns):
    assert call_student(student_function(ns, "neg"), ("operator.neg",), 7) == -7
'''

ADD = "def add(a, b):\n    return a + b"
MUL = "def mul(a, b):\n    return a * b"
NEG = "def neg(a):\n    return -a"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    hidden = root / "hidden"
    hidden.mkdir()
    (hidden / "hidden_synthetic.py").write_text(SYNTHETIC)
    subs = root / "subs"
    subs.mkdir()
    # raising cells, sys.exit, os._exit (kills the process: the notebook is rerun without that
    # cell), megabytes of output, a deleted name
    _notebook(subs / "mixed.ipynb", [
        "1 / 0", ADD, "print('x' * 5_000_000)\nimport sys\nsys.stderr.write('y' * 3_000_000)",
        MUL, "del mul", "import sys\nsys.exit(1)", "import os\nos._exit(3)", NEG], "synthetic")
    # infinite loops: in a cell, when called, and one that swallows the timeout (watchdog kill)
    _notebook(subs / "loops.ipynb", [
        "def add(a, b):\n    while True:\n        pass", "while True:\n    pass", MUL,
        "def neg(a):\n    while True:\n        try:\n            while True:\n                pass\n"
        "        except BaseException:\n            pass"], "synthetic")
    # cheating: shadowed name, a patched trusted module, the forbidden implementation, fake checks
    _notebook(subs / "cheat.ipynb", [
        ADD, "add = 3", "def mul(a, b):\n    return 0.0",
        "import math\nmath.isclose = lambda *a, **k: True\ncheck_mul = lambda f: print('PASSED')",
        "from operator import neg as _n\ndef neg(a):\n    return _n(a)"], "synthetic")
    _notebook(subs / "good.ipynb", [ADD, MUL, NEG], "synthetic")
    results = grading.grade(subs, root / "results", hidden, FAST, jobs=2)
    return {Path(k).stem: v for k, v in results.items()}, root


def _scores(result):
    return {t["name"].split(":")[0]: t["score"] for t in result["tests"]}


def test_good_synthetic(hostile):
    results, _ = hostile
    assert _scores(results["good"]) == {"add": 1.0, "mul": 2.0, "neg": 1.0}
    assert results["good"]["score"] == 4.0


def test_raising_exiting_flooding_and_deleted(hostile):
    results, root = hostile
    r = results["mixed"]
    assert _scores(r) == {"add": 1.0, "mul": 0.0, "neg": 1.0}, r
    mul = next(t for t in r["tests"] if t["name"].startswith("mul"))
    assert "does not define `mul`" in mul["output"]
    assert "ZeroDivisionError" in r["output"] and "run again without it" in r["output"]
    assert (root / "results" / "mixed.json").stat().st_size < 100_000  # output capped


def test_infinite_loops_cost_only_their_question(hostile):
    results, _ = hostile
    r = results["loops"]
    assert _scores(r) == {"add": 0.0, "mul": 2.0, "neg": 0.0}, r
    outputs = {t["name"].split(":")[0]: t["output"] for t in r["tests"]}
    assert "longer than" in outputs["add"]
    assert "stopped the grading process" in outputs["neg"]
    assert "took longer than" in r["output"]  # the looping cell


# --- a broken exercise is paid for once: later cells calling it cost what they cost when it raises --

CALLS = ["assert add(1, 2) == 3", "print([add(i, i) for i in range(3)])", "z = add(5, 5)",
         "print(add(0, 1))"]  # later cells calling the exercise (a check, then demos)
BROKEN_ADD = {
    "raising": "def add(a, b):\n    raise RuntimeError('boom')",
    "hanging": "def add(a, b):\n    while True:\n        pass",
    "exiting": "def add(a, b):\n    import os\n    os._exit(1)",
    "swallowing": "def add(a, b):\n    while True:\n        try:\n            while True:\n"
                  "                pass\n        except BaseException:\n            pass",
    # a method of the student's class (notebook 05's MapRecorder is one): stopped in the rerun too
    "exiting_method": "class Adder:\n    def __call__(self, a, b):\n        import os\n        os._exit(1)\n\n"
                      "add = Adder()",
}
BUSY = "while True:\n    add(1, 2)"  # a cell looping over a fast function: the cell is stopped, not `add`


@pytest.fixture(scope="module")
def broken(hostile):
    """The same 7-cell notebook with ``add`` correct and broken (each later cell calls it), graded
    one after the other (not side by side: a looping cell holds a core); -> {name: results}."""
    _, root = hostile
    folder = root / "broken"
    folder.mkdir()
    results = {}
    for name in ["good", *BROKEN_ADD, "busy"]:
        cells = [BROKEN_ADD.get(name, ADD), *([BUSY] if name == "busy" else []), *CALLS, MUL, NEG]
        path = _notebook(folder / f"{name}.ipynb", cells, "synthetic")
        results[name] = grading.grade_notebook(path, root / "hidden", FAST)
    return results


def test_a_broken_exercise_is_paid_for_once(broken):
    """Raising, hanging or exiting: however many later cells call the broken function, it costs at
    most one cell limit and one rerun (its time: benchmarks/grading_cost.py). Before, each later
    call of a hanging function waited for its own cell limit (and the hidden test for its own), and
    each later call of an exiting one killed the process again, until the reruns ran out."""
    results = broken
    for name in ("good", "busy", *BROKEN_ADD):
        want = {"add": 0.0 if name in BROKEN_ADD else 1.0, "mul": 2.0, "neg": 1.0}
        assert _scores(results[name]) == want, (name, results[name])  # scored question by question
    logs = {name: r["output"] for name, r in results.items()}
    # a slow cell calling a fast function is stopped itself, and the function is not
    assert logs["busy"].count("took longer than") == 1 and "FunctionStopped" not in logs["busy"], logs["busy"]
    outputs = {name: {t["name"].split(":")[0]: t["output"] for t in r["tests"]}
               for name, r in results.items()}
    assert "RuntimeError: boom" in outputs["raising"]["add"]
    assert "took longer than" not in logs["raising"] and "run again" not in logs["raising"]
    for name in ("hanging", "swallowing"):
        assert "in one call and was stopped at the 4 s limit of cell 1" in outputs[name]["add"], outputs[name]
        assert "fails at once" in outputs[name]["add"]
    assert "ended the grading process (os._exit) in cell 1" in outputs["exiting"]["add"]
    assert "`Adder.__call__` ended the grading process" in logs["exiting_method"], logs["exiting_method"]
    assert "ended the grading process (os._exit) in cell 1" in outputs["exiting_method"]["add"]  # not again
    # the hanging call costs the checking cell's limit; the three later calls fail at once
    hanging = logs["hanging"]
    assert hanging.count("took longer than") == 1 and "cell 1 took longer than" in hanging, hanging
    assert hanging.count("FunctionStopped") == 3 and "run again" not in hanging, hanging
    for name in ("exiting", "swallowing", "exiting_method"):  # one rerun, with `add` failing at once in it
        assert logs[name].count("run again without it") == 1, logs[name]


def test_cheating_loses_only_its_question(hostile):
    results, _ = hostile
    r = results["cheat"]
    assert _scores(r) == {"add": 0.0, "mul": 0.0, "neg": 0.0}, r
    outputs = {t["name"].split(":")[0]: t["output"] for t in r["tests"]}
    assert "is a int, not a function" in outputs["add"]
    assert "mul(2.5, 4) gave 0.0" in outputs["mul"]  # math.isclose was restored
    assert "operator.neg" in outputs["neg"] and "not accepted" in outputs["neg"]


def test_real_assignment_cheats(tmp_path):
    """Against the real 01_attention tests: monkeypatching p2p_lab and torch, and calling the
    package's implementation, each lose their question; the grader reports why."""
    wrong_attention = """
        import math, torch
        def attention(Q, K, V):
            w = torch.softmax(Q @ K.transpose(-2, -1), dim=-1)  # no sqrt(d_k)
            return w @ V, w
        import p2p_lab.attention as A
        A.scaled_dot_product_attention = lambda q, k, v, mask=None: attention(q, k, v)
        torch.allclose = lambda *a, **k: True
        import p2p_lab.checks._core as core
        core._close = lambda *a, **k: (True, 0.0)
        def check_attention(fn):
            print("attention: PASSED")
    """
    uses_package = """
        from p2p_lab.attention import multi_head_attention as mha
        def multi_head_attention(X, W_q, W_k, W_v, W_o, heads):
            return mha(X, W_q, W_k, W_v, W_o, heads)
    """
    path = _notebook(tmp_path / "sub.ipynb", [wrong_attention, uses_package], "01_attention")
    r = grading.grade(path, tmp_path / "r.json", limits=Limits(cell_s=120, question_s=120, total_s=600))
    out = {t["name"].split(":")[0]: t for t in r["tests"]}
    assert out["attention"]["score"] == 0 and "sqrt(d_k)" in out["attention"]["output"]
    assert out["multi_head_attention"]["score"] == 0
    assert "p2p_lab.attention.multi_head_attention" in out["multi_head_attention"]["output"]
    assert json.loads((tmp_path / "r.json").read_text())["score"] == 0


def test_grade_cli_on_a_directory(hostile, tmp_path, capsys):
    from p2p_lab.__main__ import main

    _, root = hostile
    subs = tmp_path / "subs"
    subs.mkdir()
    (subs / "a").mkdir()
    for name in ("one", "two"):
        _notebook(subs / "a" / f"{name}.ipynb", [ADD, MUL, NEG] if name == "one" else [ADD], "synthetic")
    code = main(["grade", str(subs), "--json", str(tmp_path / "out"), "--hidden", str(root / "hidden"),
                 "--cell-timeout", "4", "--question-timeout", "4", "--jobs", "2"])
    assert code == 0
    one = json.loads((tmp_path / "out" / "a__one.json").read_text())
    two = json.loads((tmp_path / "out" / "a__two.json").read_text())
    assert (one["score"], two["score"]) == (4.0, 1.0)
    assert "4 / 4" in capsys.readouterr().out
    assert main(["grade", str(tmp_path / "missing.ipynb")]) == 2


VISIBLE = SYNTHETIC.replace('"add": {"points": 1.0, "name": "add"}', '"add": {"points": 1.0, "name": "add", "public": True}')


def test_results_carry_gradescope_visibility(tmp_path):
    """Hidden tests' results: after the due date unless the instructor says otherwise (grade's
    visibility, the CLI's --visibility); a question marked public is visible at once."""
    from p2p_lab.grading.__main__ import main

    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "hidden_synthetic.py").write_text(VISIBLE)
    nb = _notebook(tmp_path / "good.ipynb", [ADD, MUL, NEG], "synthetic")
    r = grading.grade(nb, tmp_path / "default.json", hidden, FAST)
    assert {t["name"].split(":")[0]: t["visibility"] for t in r["tests"]} == {
        "add": "visible", "mul": "after_due_date", "neg": "after_due_date"}
    assert r["score"] == 4.0
    assert main(["grade", str(nb), "--json", str(tmp_path / "cli.json"), "--hidden", str(hidden),
                 "--visibility", "hidden"]) == 0
    written = json.loads((tmp_path / "cli.json").read_text())
    assert [t["visibility"] for t in written["tests"]] == ["visible", "hidden", "hidden"]


def test_a_visibility_gradescope_does_not_know_is_refused(tmp_path, capsys):
    from p2p_lab.grading.__main__ import main

    with pytest.raises(ValueError, match="'later' is not one of Gradescope's: hidden, after_due_date"):
        grading.grade(tmp_path, visibility="later")
    with pytest.raises(ValueError, match="not one of Gradescope's"):
        grading.release(tmp_path / "out", visibility="after due date")
    assert not (tmp_path / "out").exists()  # refused before anything was written
    with pytest.raises(SystemExit):
        main(["grade", str(tmp_path), "--visibility", "later"])
    assert "invalid choice: 'later'" in capsys.readouterr().err


def test_a_public_flag_that_is_not_a_bool_is_an_instructor_error(tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "hidden_synthetic.py").write_text(VISIBLE.replace('"public": True', '"public": "yes"'))
    nb = _notebook(tmp_path / "good.ipynb", [ADD], "synthetic")
    r = grading.grade_notebook(nb, hidden, FAST)
    assert r["tests"] == [] and "'public': 'yes'; write True" in r["output"]


def test_parallel_grading_splits_the_cores(monkeypatch, tmp_path):
    """Each grading process gets the usable CPUs // jobs torch threads (unless the caller set them,
    in Limits or in the environment)."""
    seen = []
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(parent, "usable_cpus", lambda: 4)
    monkeypatch.setattr(parent, "_grade_to", lambda nb, out, hidden, limits, visibility=None: seen.append(
        parent._child_env((limits or Limits()).threads).get("OMP_NUM_THREADS")) or {})
    folder = tmp_path
    for name in ("a.ipynb", "b.ipynb"):
        (folder / name).write_text("{}")
    grading.grade(folder, folder / "out", jobs=2)
    assert seen == ["2", "2"]
    grading.grade(folder, folder / "out", jobs=1)
    assert seen[2:] == ["4", "4"]  # all the usable CPUs, not torch's default
    grading.grade(folder, folder / "out", jobs=2, limits=Limits(threads=1))
    assert seen[4:] == ["1", "1"]
    del seen[4:]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    grading.grade(folder, folder / "out", jobs=2)
    assert seen[4:] == ["3", "3"]


def _cgroup(tmp_path, files: dict) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return tmp_path


@pytest.mark.parametrize("files, quota", [
    ({"cpu.max": "50000 100000\n"}, 0.5),  # Gradescope's default container, cgroup v2
    ({"cpu.max": "250000 100000\n"}, 2.5),
    ({"cpu.max": "max 100000\n"}, None),  # v2 without a quota
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1.5),  # v1
    ({"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    ({"cpu.max": "garbage"}, None),
    ({}, None),  # no cgroup files at all
])
def test_cgroup_cpu_quota_from_fake_cgroup_files(tmp_path, files, quota):
    assert parent.cgroup_cpu_quota(_cgroup(tmp_path, files)) == quota


@pytest.mark.parametrize("files, cpus", [
    ({"cpu.max": "50000 100000\n"}, 1),  # half a CPU: still one thread
    ({"cpu.max": "250000 100000\n"}, 2),  # rounded down: no thread waits for a third CPU
    ({"cpu.max": "800000 100000\n"}, 3),  # a quota above the affinity: the 3 CPUs it may run on
    ({"cpu.max": "max 100000\n"}, 3),
    ({"cpu/cpu.cfs_quota_us": "150000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
    ({}, 3),
])
def test_usable_cpus_is_the_quota_or_the_affinity_never_the_host(monkeypatch, tmp_path, files, cpus):
    monkeypatch.setattr(parent.os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    monkeypatch.setattr(parent.os, "cpu_count", lambda: 64)  # the host's count is never used
    assert parent.usable_cpus(_cgroup(tmp_path, files)) == cpus


def test_child_entry_point_is_importable_without_side_effects():
    from p2p_lab.grading.child import child_main

    assert "p2p_lab.grading" in sys.modules and callable(child_main)
