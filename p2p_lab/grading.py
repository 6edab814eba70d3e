"""Exercises, release and autograding for every notebook of the course (instructors' side).

* **Master notebooks** (``notebooks/*.ipynb``) hold each exercise's solution between two comment
  lines, the markers of otter-grader (:data:`BEGIN` and :data:`END`), in a code cell with metadata
  ``{"tags": ["exercise"], "p2p_lab": {"question": "<question_id>"}}``; the notebook's metadata
  says which assignment it is: ``{"p2p_lab": {"assignment": "<file stem>"}}``.
* :func:`release` writes ``OUT/student`` (stubs raising ``NotImplementedError`` in place of the
  solutions, the package, the shipped model; no hidden test) and ``OUT/autograder`` (what grading
  needs, with ``tests/hidden`` and a Gradescope ``run_autograder`` script).
* :func:`grade` recognises the assignment from a submitted notebook's metadata, executes it in a
  separate process (time limits per cell, per question and in total; output capped), runs
  ``tests/hidden/hidden_<assignment>.py`` against the executed namespace and writes Gradescope's
  JSON. A hidden test module defines ``QUESTIONS = {"<id>": {"points": float, "name": str}}`` and a
  ``test_<id>(ns)`` per question, which raises ``AssertionError`` on failure (or returns a fraction
  in [0, 1] for partial credit).
* :func:`forbid` is what hidden tests wrap student calls in, so that calling the package's own
  implementation of the very thing asked fails with :class:`ForbiddenCall`.

Threat model: the grader survives accidents and the usual hostile patterns (raising cells,
infinite loops, megabytes of prints, ``sys.exit``, deleted or shadowed names, redefined checks,
monkeypatched ``p2p_lab`` / ``torch`` functions, calling the package's implementation). It runs
student code in the same process as the hidden tests, as otter-grader does, so it is no sandbox
against a determined attacker: run it in a container (Gradescope does).
"""
from __future__ import annotations

import ast
import contextlib
import copy
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import types
import warnings
from pathlib import Path

__all__ = ["ForbiddenCall", "forbid", "call_student", "student_function", "release",
           "student_notebook", "grade", "Limits", "find_assignment", "register_cli"]

# Built from pieces so that this file itself never contains a marker line.
BEGIN = "# BEGIN " + "SOLUTION"
END = "# END " + "SOLUTION"
PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
_ID = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # question ids (test_<id> must be a name)
_ASSIGNMENT = re.compile(r"^[A-Za-z0-9_-]+$")  # assignment names are file stems


# === forbid ====================================================================================

class ForbiddenCall(BaseException):
    """The graded code called a function it was asked to write itself (see :func:`forbid`).

    A ``BaseException`` so that a student's ``except Exception`` cannot swallow it; :func:`forbid`
    re-raises it on exit even if it was swallowed by a bare ``except``.
    """


_ACTIVE: list["forbid"] = []  # the forbid contexts now open, innermost last
_NAMESPACES: list[dict] = []  # executed student namespaces (registered by the grader)
_SNAPSHOT = None  # the grader's snapshot of trusted modules, restored after every student call


def _resolve(dotted: str):
    """``"torch.nn.functional.softmax"`` -> (owner object, attribute name, current value)."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:-1]:
                obj = getattr(obj, p)
            return obj, parts[-1], getattr(obj, parts[-1])
        except AttributeError:
            return None
    return None


def _forbidden_hit(name: str) -> ForbiddenCall:
    """Called by a forbidden function's stand-in: records the call, returns the exception to raise."""
    for ctx in _ACTIVE:
        if name in ctx.names:
            ctx.calls.append(name)
    return ForbiddenCall(f"called {name}, the package's own implementation of what this exercise "
                         f"asks you to write; write it yourself from the formula")


def _stand_in(name: str):
    def forbidden(*args, **kwargs):
        raise _forbidden_hit(name)

    forbidden.__name__ = forbidden.__qualname__ = name.rsplit(".", 1)[-1]
    return forbidden


def _raising_code(name: str) -> types.CodeType:
    """Code for a function body that raises ForbiddenCall, runnable with any function's globals."""
    src = (f"def _forbidden(*args, **kwargs):\n    import p2p_lab.grading as _g\n"
           f"    raise _g._forbidden_hit({name!r})\n")
    scope: dict = {}
    exec(compile(src, f"<forbidden {name}>", "exec"), scope)
    return scope["_forbidden"].__code__


class forbid:
    """Context manager: while open, calling any of the named functions raises :class:`ForbiddenCall`.

    ``with forbid("p2p_lab.attention.scaled_dot_product_attention",
    "torch.nn.functional.scaled_dot_product_attention"): out = student_fn(...)``.
    Each name is replaced on its owner (module or class), in every loaded module and registered
    student namespace that holds it under any name, and, for Python functions, in its code object,
    so aliases (``from p2p_lab.attention import scaled_dot_product_attention as f``) are caught
    too. Everything is restored on exit. If a forbidden function was called and the exception was
    swallowed, ``ForbiddenCall`` is raised on exit anyway. Compute references OUTSIDE the block.
    Names that cannot be imported are ignored (so optional modules may be listed).
    """

    def __init__(self, *names: str):
        self.names = names
        self.calls: list[str] = []
        self._undo: list = []

    def __enter__(self):
        _ACTIVE.append(self)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            replaced = {}  # id(original) -> stand-in
            for name in self.names:
                found = _resolve(name)
                if found is None:
                    continue
                owner, attr, original = found
                replaced[id(original)] = stand_in = _stand_in(name)
                self._set(owner, attr, stand_in)
                func = getattr(original, "__func__", original)
                if isinstance(func, types.FunctionType) and not func.__code__.co_freevars:
                    old = func.__code__
                    func.__code__ = _raising_code(name)
                    self._undo.append(lambda f=func, c=old: setattr(f, "__code__", c))
            if replaced:
                for d in _holders():  # one pass over every module and namespace for all names
                    for key, value in list(d.items()):
                        if id(value) in replaced:
                            self._set_item(d, key, replaced[id(value)])
        return self

    def _set(self, owner, attr, value) -> None:
        try:
            old = owner.__dict__[attr] if attr in getattr(owner, "__dict__", {}) else getattr(owner, attr)
            setattr(owner, attr, value)
        except (AttributeError, TypeError):
            return
        self._undo.append(lambda: setattr(owner, attr, old))

    def _set_item(self, d: dict, key, value) -> None:
        old = d[key]
        d[key] = value
        self._undo.append(lambda: d.__setitem__(key, old))

    def __exit__(self, exc_type, exc, tb):
        for undo in reversed(self._undo):
            with contextlib.suppress(Exception):
                undo()
        self._undo.clear()
        if self in _ACTIVE:
            _ACTIVE.remove(self)
        if not _ACTIVE and _SNAPSHOT is not None:
            _SNAPSHOT.restore()  # undo whatever the student's call patched
        if self.calls and exc_type is None:
            raise _forbidden_hit(self.calls[0])
        return False


def _holders():
    """Every dict a forbidden function might be referenced from: module globals, student namespaces."""
    for mod in list(sys.modules.values()):
        d = getattr(mod, "__dict__", None) if isinstance(mod, types.ModuleType) else None
        if isinstance(d, dict):
            yield d
    yield from _NAMESPACES


# === helpers for hidden tests ===================================================================

def student_function(ns: dict, name: str):
    """The student's function ``name`` from the executed namespace, or an AssertionError saying why not."""
    if name not in ns:
        raise AssertionError(f"your notebook does not define `{name}`: keep the exercise cell's "
                             f"function name, run the cell, and do not delete it later")
    fn = ns[name]
    if not callable(fn):
        raise AssertionError(f"`{name}` is a {type(fn).__name__}, not a function: a later cell "
                             f"overwrote it; rename that variable")
    return fn


def _sanitize(value, path="the result"):
    """Plain copies of what a student returned; anything else (e.g. tensor subclasses that could
    fake comparisons) is refused. Imports nothing: a tensor can only exist if torch is loaded."""
    torch, np = sys.modules.get("torch"), sys.modules.get("numpy")
    if torch is not None and type(value) is torch.Tensor:
        return value.detach().clone()
    if np is not None and type(value) is np.ndarray and value.dtype != object:
        return value.copy()
    if np is not None and isinstance(value, np.generic):
        return value.item()
    if type(value) in (int, float, bool, str, type(None)):
        return value
    if type(value) in (tuple, list):
        return type(value)(_sanitize(v, f"{path}[{i}]") for i, v in enumerate(value))
    raise AssertionError(f"{path} is a {type(value).__name__}; return plain torch.Tensor values "
                         f"(or tuples of them)")


def call_student(fn, forbidden=(), /, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` with ``forbidden`` names blocked; return sanitized copies.

    Inputs are cloned first, so a function that edits its inputs in place cannot spoil the
    reference computed from them.
    """
    def copy_(x):
        return x.clone() if hasattr(x, "clone") and type(x).__module__.startswith("torch") else x

    args = [copy_(a) for a in args]
    kwargs = {k: copy_(v) for k, v in kwargs.items()}
    with forbid(*forbidden):
        out = fn(*args, **kwargs)
    return _sanitize(out)


# === release ===================================================================================

def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def strip_solutions(source: str, question: str) -> str:
    """Replace each ``BEGIN``..``END`` block (markers included) with a stub at the same indentation."""
    out, inside, indent = [], False, ""
    for number, line in enumerate(source.split("\n"), 1):
        marker = line.strip()
        if marker == BEGIN:
            if inside:
                raise ValueError(f"line {number}: a second BEGIN marker before END")
            inside, indent = True, line[: len(line) - len(line.lstrip())]
            out.append(f'{indent}raise NotImplementedError("{question}: write your solution here")')
        elif marker == END:
            if not inside:
                raise ValueError(f"line {number}: an END marker without BEGIN")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError("a BEGIN marker without END")
    return "\n".join(out)


def _question(cell) -> str | None:
    return (cell.get("metadata", {}).get("p2p_lab") or {}).get("question")


def student_notebook(nb, name: str = "notebook"):
    """The student version of a master notebook (a copy): solutions stubbed, outputs cleared."""
    nb = copy.deepcopy(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        src = _source(cell)
        if BEGIN in src or END in src:
            question = _question(cell)
            if not question or not _ID.match(question):
                raise ValueError(f"{name}, cell {i}: an exercise cell needs metadata "
                                 f'{{"p2p_lab": {{"question": "<question_id>"}}}}, got {question!r}')
            try:
                cell.source = strip_solutions(src, question)
            except ValueError as err:
                raise ValueError(f"{name}, cell {i}: {err}") from None
        cell.outputs, cell.execution_count = [], None
    return nb


def _copy_tree(src: Path, dst: Path) -> None:
    if src.is_dir():
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
    elif src.exists():
        shutil.copy2(src, dst)


def point_at_repo(nb, name: str, repo: str):
    """The notebook's Colab badge and Colab install line rewritten for the GitHub repository ``repo``."""
    from . import colab_url, install_spec

    old = (colab_url(name), install_spec())
    new = (colab_url(name, repo), install_spec(repo))
    for cell in nb.cells:
        for a, b in zip(old, new):
            cell.source = cell.source.replace(f"({a})", f"({b})").replace(f'"{a}"', f'"{b}"')
    return nb


def release(out_dir, notebooks_dir=None, repo_root=None, repo: str | None = None) -> Path:
    """Write ``out_dir/student`` and ``out_dir/autograder`` from the master notebooks.

    ``student/``: ``notebooks/`` (stubs in place of solutions, outputs cleared), the ``p2p_lab``
    package, ``data/`` (the shipped model), ``pyproject.toml`` and a README (``pip install -e .``).
    ``autograder/``: the same package and data, ``tests/hidden/``, and Gradescope's
    ``setup.sh`` / ``run_autograder`` with a README. ``repo``: the GitHub repository ("owner/name")
    the student version will live in; its notebooks' Colab badges and install lines point there
    (default: ``p2p_lab.COLAB_REPO``). Returns ``out_dir``.
    """
    import nbformat

    root = Path(repo_root or REPO_ROOT)
    notebooks_dir = Path(notebooks_dir or root / "notebooks")
    out = Path(out_dir)
    masters = sorted(notebooks_dir.glob("*.ipynb"))
    if not masters:
        raise FileNotFoundError(f"no notebooks in {notebooks_dir}")
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
    hidden = grader / "tests" / "hidden"
    hidden.mkdir(parents=True)
    for p in sorted((root / "tests" / "hidden").glob("hidden_*.py")):
        shutil.copy2(p, hidden / p.name)
    _write_bundle_files(student, grader, sorted(versions))
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
    python -m p2p_lab grade SUBMISSION.ipynb --json results.json
    python -m p2p_lab grade SUBMISSIONS_DIR --json results_dir/   # one JSON per notebook

Gradescope: zip this folder's contents (setup.sh and run_autograder at the top level) and upload
it as the autograder; `run_autograder` grades /autograder/submission into
/autograder/results/results.json. Hidden tests: tests/hidden/hidden_<assignment>.py.
Notebooks graded: {names}.
"""

_RUN_AUTOGRADER = """#!/usr/bin/env bash
# Gradescope entry point: grade the submitted notebook into results.json.
set -u
cd /autograder/source
mkdir -p /autograder/results
python3 -m p2p_lab grade /autograder/submission --json /autograder/results/results.json \\
    --hidden /autograder/source/tests/hidden
"""

_SETUP = """#!/usr/bin/env bash
# Gradescope set-up: CPU-only torch first, then the package with its dependencies.
set -eu
pip3 install --index-url https://download.pytorch.org/whl/cpu torch
pip3 install -e "/autograder/source[lab]"
"""


def _write_bundle_files(student: Path, grader: Path, names: list[str]) -> None:
    (student / "README.md").write_text(_STUDENT_README)
    (grader / "README.md").write_text(_GRADER_README.format(names=", ".join(names)))
    for name, text in (("run_autograder", _RUN_AUTOGRADER), ("setup.sh", _SETUP)):
        (grader / name).write_text(text)
        (grader / name).chmod(0o755)


# === grade: the parent side ====================================================================

@dataclasses.dataclass
class Limits:
    """Time and output limits of one submission's grading."""

    cell_s: float = 180.0  # one notebook cell
    question_s: float = 60.0  # one question's hidden test
    startup_s: float = 180.0  # importing torch & co and loading the hidden tests
    total_s: float = 1200.0  # the whole submission, reruns included
    output_chars: int = 20_000  # kept per cell / per question / for the child's raw output
    attempts: int = 4  # reruns after a cell or a test kills or hangs the grading process
    memory_gb: float | None = None  # address-space limit of the grading process (None: none)
    threads: int | None = None  # torch threads of the grading process (None: torch's choice);
    # ``grade`` with jobs > 1 sets cores // jobs: two notebooks graded side by side with 2 threads
    # each on 2 cores spun for over 10 minutes, against 97 s with 1 thread each


def _load_json_nb(path: Path):
    import nbformat

    return nbformat.read(path, as_version=4)


def find_assignment(nb, path: Path | None = None, hidden_dir: Path | None = None) -> str:
    """The assignment a notebook answers: its ``p2p_lab.assignment`` metadata, else the hidden
    test file whose questions its exercise cells name, else its file name."""
    meta = nb.metadata.get("p2p_lab") or {}
    name = meta.get("assignment") if isinstance(meta, dict) else None
    if isinstance(name, str) and _ASSIGNMENT.match(name):
        return name
    asked = {_question(c) for c in nb.cells if _question(c)}
    if asked and hidden_dir is not None:
        for p in sorted(Path(hidden_dir).glob("hidden_*.py")):
            if asked & set(_questions(p)):
                return p.stem[len("hidden_"):]
    if path is not None and hidden_dir is not None and (Path(hidden_dir) / f"hidden_{path.stem}.py").exists():
        return path.stem
    raise ValueError("cannot tell which assignment this notebook answers: its metadata has no "
                     "p2p_lab.assignment; submit the notebook file you were given (renaming is fine)")


def _questions(hidden_file: Path) -> dict:
    """QUESTIONS of a hidden test file, read without running it (a literal dict)."""
    tree = ast.parse(hidden_file.read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "QUESTIONS" for t in targets):
            questions = ast.literal_eval(node.value)
            for q, spec in questions.items():
                if not _ID.match(q) or "points" not in spec or "name" not in spec:
                    raise ValueError(f"{hidden_file.name}: question {q!r} needs an identifier id and "
                                     f"'points' and 'name'")
            return questions
    raise ValueError(f"{hidden_file.name} defines no literal QUESTIONS dict")


def default_hidden_dir() -> Path:
    """``$P2P_LAB_HIDDEN``, else ``tests/hidden`` beside the package (a checkout or the bundle)."""
    return Path(os.environ.get("P2P_LAB_HIDDEN") or REPO_ROOT / "tests" / "hidden")


def _test(name, score, max_score, output) -> dict:
    return {"name": name, "score": round(float(score), 4), "max_score": float(max_score),
            "output": output}


def _error_result(message: str, started: float) -> dict:
    return {"score": 0.0, "execution_time": round(time.monotonic() - started, 1), "output": message,
            "tests": []}


def grade_notebook(path, hidden_dir=None, limits: Limits | None = None) -> dict:
    """Grade one submitted notebook; returns Gradescope's results dict. Never raises for a bad
    submission: what went wrong is in the results' ``output``."""
    started = time.monotonic()
    path, limits = Path(path), limits or Limits()
    hidden_dir = Path(hidden_dir or default_hidden_dir())
    try:
        nb = _load_json_nb(path)
    except Exception as err:  # noqa: BLE001 - any unreadable file is the submission's problem
        return _error_result(f"{path.name} is not a readable Jupyter notebook ({type(err).__name__}: "
                             f"{err}); submit the .ipynb file", started)
    try:
        assignment = find_assignment(nb, path, hidden_dir)
    except ValueError as err:
        return _error_result(str(err), started)
    hidden = hidden_dir / f"hidden_{assignment}.py"
    if not hidden.exists():
        return _error_result(f"this notebook says it is assignment {assignment!r}, which has no hidden "
                             f"tests here ({hidden}); submit one of the course's notebooks", started)
    try:
        questions = _questions(hidden)
    except (SyntaxError, ValueError) as err:
        return _error_result(f"the hidden tests {hidden.name} are broken (an instructor error): {err}", started)
    try:
        results, log = _run_attempts(path, hidden, questions, limits)
    except Exception as err:  # noqa: BLE001 - the grader itself must never crash on a submission
        results, log = {}, [f"internal grader error ({type(err).__name__}: {err}); nothing was graded"]
    tests = [results.get(q) or _test(f"{q}: {spec['name']}", 0, spec["points"], "not graded")
             for q, spec in questions.items()]
    return {"score": round(sum(t["score"] for t in tests), 4),
            "execution_time": round(time.monotonic() - started, 1),
            "output": f"assignment {assignment}\n" + "\n".join(log), "tests": tests}


def _run_attempts(path: Path, hidden: Path, questions: dict, limits: Limits):
    """Run the grading process, rerunning it without a cell or test that killed or hung it."""
    deadline = time.monotonic() + limits.total_s
    skip_cells: list[int] = []
    results: dict[str, dict] = {}
    log: list[str] = []
    for _ in range(limits.attempts):
        remaining = [q for q in questions if q not in results]
        if not remaining or time.monotonic() >= deadline:
            break
        events, reason, raw = _run_child(path, hidden, remaining, skip_cells, limits, deadline)
        cell_errors = [e for e in events if "cell_error" in e]
        if cell_errors and not log:
            log += [e["cell_error"] for e in cell_errors]
        _collect(events, remaining, questions, results, limits.output_chars)
        if any(e.get("done") for e in events):
            break
        last = next((e for e in reversed(events) if "cell" in e or "question" in e), None)
        if last is None:
            log.append(f"the grading process stopped before running the notebook ({reason}); "
                       f"its output ends with: {raw[-1500:]}")
            break
        if "question" in last:
            q = last["question"]
            if q in questions and q not in results:
                spec = questions[q]
                results[q] = _test(f"{q}: {spec['name']}", 0, spec["points"],
                                   f"the test of this question stopped the grading process ({reason}): "
                                   f"an infinite loop, a crash, or exit() inside your function?")
        else:
            skip_cells.append(int(last["cell"]))
            log.append(f"cell {last['cell']} stopped the grading process ({reason}); the notebook was "
                       f"run again without it")
    for q in questions:
        if q not in results:
            log.append(f"question {q} was not graded: the time for this submission ran out")
    return results, log


def _collect(events, remaining, questions, results: dict, cap: int) -> None:
    """Add the results the grading process reported for ``remaining`` questions to ``results``."""
    for e in events:
        r = e.get("result")
        if isinstance(r, dict) and r.get("id") in remaining and r["id"] not in results:
            spec = questions[r["id"]]
            try:
                frac = min(1.0, max(0.0, float(r.get("fraction", 0.0))))
            except (TypeError, ValueError):
                frac = 0.0
            results[r["id"]] = _test(f"{r['id']}: {spec['name']}", frac * spec["points"],
                                     spec["points"], str(r.get("output", ""))[:cap])


def _child_env(threads: int | None = None) -> dict:
    env = dict(os.environ)
    if threads:  # the caller's own OMP_NUM_THREADS / MKL_NUM_THREADS win
        env.setdefault("OMP_NUM_THREADS", str(threads))
        env.setdefault("MKL_NUM_THREADS", str(threads))
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["MPLBACKEND"] = "Agg"
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("IPYTHONDIR", str(Path(tempfile.gettempdir()) / "p2p_lab_ipython"))
    return env


def _drain(stream, keep: list, cap: int) -> None:
    """Read a pipe to its end, keeping the first ``cap`` bytes (so a flood cannot block the child)."""
    size = 0
    for chunk in iter(lambda: stream.read(65536), b""):
        if size < cap:
            keep.append(chunk[: cap - size])
        size += len(chunk)


def _run_child(path, hidden, questions, skip_cells, limits: Limits, deadline: float):
    """One grading process, watched: killed when a phase overruns. -> (events, reason, raw output)."""
    with tempfile.TemporaryDirectory(prefix="p2p_grade_") as tmp:
        events_file = Path(tmp) / "events.jsonl"
        events_file.touch()
        config = dict(notebook=str(path.resolve()), hidden=str(hidden.resolve()), questions=questions,
                      skip_cells=skip_cells, cell_s=limits.cell_s, question_s=limits.question_s,
                      output_chars=limits.output_chars, memory_gb=limits.memory_gb,
                      events=str(events_file))
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        cmd = [sys.executable, "-c", "import sys; from p2p_lab.grading import _child_main; "
               "_child_main(sys.argv[1])", str(Path(tmp) / "config.json")]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, cwd=str(path.resolve().parent),
                                env=_child_env(limits.threads), start_new_session=True)
        raw: list[bytes] = []
        reader = threading.Thread(target=_drain, args=(proc.stdout, raw, limits.output_chars), daemon=True)
        reader.start()
        reason = _watch(proc, events_file, limits, deadline)
        _kill_group(proc)
        reader.join(timeout=5)
        events = _read_events(events_file)
    return events, reason, b"".join(raw).decode("utf-8", "replace")


def _watch(proc, events_file: Path, limits: Limits, deadline: float) -> str:
    grace = 10.0
    phase, since = ("startup", limits.startup_s), time.monotonic()
    seen = 0
    while True:
        code = proc.poll()
        if code is not None:
            return f"the process exited with code {code}" if code else "the process exited"
        events = _read_events(events_file)
        if len(events) > seen:
            for e in events[seen:]:
                if "cell" in e:
                    phase = (f"cell {e['cell']}", limits.cell_s)
                elif "question" in e:
                    phase = (f"question {e['question']}", limits.question_s)
            seen, since = len(events), time.monotonic()
        now = time.monotonic()
        if now >= deadline:
            return f"the submission's total time limit of {limits.total_s:.0f} s ran out"
        if now - since > phase[1] + grace:
            return f"{phase[0]} ran past its time limit of {phase[1]:.0f} s"
        time.sleep(0.1)


def _kill_group(proc) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.wait(timeout=10)


def _read_events(path: Path) -> list[dict]:
    events = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return events
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            e = json.loads(line)
            if isinstance(e, dict):
                events.append(e)
    return events


def grade(submission, json_out=None, hidden_dir=None, limits: Limits | None = None, jobs: int = 1):
    """Grade a notebook, or every notebook in a directory, and write Gradescope JSON.

    A file: ``json_out`` is the results file (default ``results.json``); returns the results dict.
    A directory: ``json_out`` is a folder (default ``SUBMISSION/results``) receiving one
    ``<name>.json`` per notebook (found recursively); returns {notebook path: results}. A directory
    holding exactly one notebook with ``json_out`` ending in ``.json`` writes that single file
    (Gradescope's layout). ``jobs``: notebooks of a directory graded at the same time.
    """
    submission = Path(submission)
    if not submission.exists():
        raise FileNotFoundError(f"no such submission: {submission}")
    if submission.is_file():
        return _grade_to(submission, Path(json_out or "results.json"), hidden_dir, limits)
    notebooks = sorted(p for p in submission.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if json_out is not None and str(json_out).endswith(".json") and len(notebooks) <= 1:
        if not notebooks:
            result = _error_result("no .ipynb file was submitted", time.monotonic())
            _write_json(Path(json_out), result)
            return result
        return _grade_to(notebooks[0], Path(json_out), hidden_dir, limits)
    out_dir = Path(json_out or submission / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    from concurrent.futures import ThreadPoolExecutor

    limits = limits or Limits()
    if jobs > 1 and limits.threads is None:  # notebooks graded side by side share the cores
        limits = dataclasses.replace(limits, threads=max(1, (os.cpu_count() or 1) // jobs))

    def one(nb: Path) -> dict:
        stem = "__".join(nb.relative_to(submission).with_suffix("").parts)
        return _grade_to(nb, out_dir / f"{stem}.json", hidden_dir, limits)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(zip(map(str, notebooks), pool.map(one, notebooks)))


def _grade_to(path: Path, json_out: Path, hidden_dir, limits) -> dict:
    result = grade_notebook(path, hidden_dir, limits)
    _write_json(json_out, result)
    return result


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))


# === grade: the child side (runs the student's code) ===========================================

class _Timeout(BaseException):
    pass


class _CappedWriter:
    """A text stream that keeps the first ``cap`` characters and drops the rest."""

    def __init__(self, cap: int):
        self.cap, self.parts, self.size, self.dropped = cap, [], 0, 0

    def write(self, s) -> int:
        s = str(s)
        room = self.cap - self.size
        if room > 0:
            self.parts.append(s[:room])
        self.size += min(len(s), max(room, 0))
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    encoding = "utf-8"

    def text(self) -> str:
        extra = f"\n[... {self.dropped} more characters of output dropped]" if self.dropped else ""
        return "".join(self.parts) + extra


class _Snapshot:
    """Callables, classes and modules of trusted libraries, restorable after student code ran."""

    PREFIXES = ("torch", "numpy", "p2p_lab", "diffusers", "transformers", "scipy", "math",
                "builtins", "_p2p_hidden_")

    def __init__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.sys_modules = {n: m for n, m in list(sys.modules.items()) if self._trusted(n) and m}
            self.modules, self.classes = [], []
            for name, mod in self.sys_modules.items():
                d = getattr(mod, "__dict__", None)
                if not isinstance(d, dict):
                    continue
                full = name == __name__ or name.startswith("_p2p_hidden_")
                self.modules.append((mod, {k: v for k, v in d.items() if full or _restorable(v)}))
                for v in list(d.values()):
                    if isinstance(v, type) and getattr(v, "__module__", None) == name:
                        self.classes.append((v, {k: a for k, a in vars(v).items() if callable(a)}))
        for mod, saved in self.modules:
            if mod is sys.modules.get(__name__):
                saved["_SNAPSHOT"] = self  # a student cannot switch off the restoring by resetting it

    def _trusted(self, name: str) -> bool:
        return name.split(".")[0] in self.PREFIXES or name.startswith("_p2p_hidden_")

    def restore(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, mod in self.sys_modules.items():
                if sys.modules.get(name) is not mod:
                    sys.modules[name] = mod
            for mod, saved in self.modules:
                d = mod.__dict__
                for k, v in saved.items():
                    if d.get(k, _restore) is not v:
                        d[k] = v
            for cls, saved in self.classes:
                d = vars(cls)
                for k in [k for k, a in d.items() if k not in saved and callable(a)]:
                    with contextlib.suppress(Exception):
                        delattr(cls, k)
                for k, v in saved.items():
                    if d.get(k, _restore) is not v:
                        with contextlib.suppress(Exception):
                            setattr(cls, k, v)


def _restorable(v) -> bool:
    return isinstance(v, types.ModuleType) or callable(v)


def _restore():  # a sentinel (never equal to a saved value)
    pass


class _Child:
    """Executes a notebook's code cells in an IPython shell, then runs the hidden tests."""

    def __init__(self, config: dict):
        self.config = config
        self.events = open(config["events"], "a", buffering=1)
        self.cap = int(config["output_chars"])

    def emit(self, **event) -> None:
        self.events.write(json.dumps(event) + "\n")
        self.events.flush()

    @contextlib.contextmanager
    def limit(self, seconds: float):
        """Raise _Timeout in this thread after ``seconds`` (and every second after, if swallowed)."""
        def on_alarm(signum, frame):
            raise _Timeout()

        signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)

    def load_hidden(self):
        import importlib.util

        path = Path(self.config["hidden"])
        name = "_p2p_hidden_" + path.stem
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module

    def shell(self):
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config

        cfg = Config()
        cfg.HistoryManager.enabled = False
        module = types.ModuleType("__p2p_submission__")
        sys.modules[module.__name__] = module
        shell = InteractiveShell.instance(config=cfg, user_module=module)
        shell.register_magic_function(lambda line="": None, "line", "matplotlib")
        _NAMESPACES.append(shell.user_ns)
        return shell

    def run_cells(self, shell) -> None:
        import nbformat

        nb = nbformat.read(self.config["notebook"], as_version=4)
        skip = set(self.config["skip_cells"])
        for i, cell in enumerate(nb.cells):
            if cell.cell_type != "code" or i in skip:
                continue
            self.emit(cell=i)
            out = _CappedWriter(self.cap)
            error = None
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                        self.limit(self.config["cell_s"]):
                    result = shell.run_cell(_source(cell), store_history=False)
                error = result.error_in_exec or result.error_before_exec
            except _Timeout:
                error = _Timeout()
            except BaseException as err:  # noqa: BLE001 - whatever the cell threw, keep going
                error = err
            if isinstance(error, _Timeout):
                error = f"took longer than {self.config['cell_s']:.0f} s and was stopped"
            elif error is not None:
                error = f"raised {type(error).__name__}: {str(error)[:300]}"
            if error:
                self.emit(cell_error=f"cell {i} {error}")
            _close_figures()

    def run_question(self, hidden, ns: dict, q: str) -> dict:
        out = _CappedWriter(self.cap)
        fraction, message = 0.0, ""
        test = getattr(hidden, f"test_{q}", None)
        try:
            if test is None:
                raise LookupError(f"the hidden tests define no test_{q} (an instructor error)")
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out), \
                    self.limit(self.config["question_s"]):
                value = test(ns)
            fraction = 1.0 if value is None or value is True else float(value)
            message = "passed" if fraction >= 1 else f"partly right: {fraction:.0%} of the points"
        except _Timeout:
            message = (f"your function took longer than {self.config['question_s']:.0f} s on the "
                       f"hidden tests and was stopped (an infinite loop?)")
        except ForbiddenCall as err:
            message = f"not accepted: your function {err}"
        except NotImplementedError:
            message = "not attempted: the function still raises NotImplementedError"
        except AssertionError as err:
            message = f"failed: {err}"
        except BaseException as err:  # noqa: BLE001 - a broken question costs only that question
            message = f"failed: the test raised {type(err).__name__}: {str(err)[:500]}"
        printed = out.text().strip()
        if printed:
            message += "\n--- printed during the test ---\n" + printed
        return {"id": q, "fraction": fraction, "output": message[: self.cap]}

    def main(self) -> None:
        global _SNAPSHOT
        if self.config.get("memory_gb"):
            import resource

            limit = int(self.config["memory_gb"] * 2 ** 30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        hidden = self.load_hidden()
        shell = self.shell()
        snapshot = _SNAPSHOT = _Snapshot()  # after the hidden tests' imports, before student code
        self.run_cells(shell)
        ns = shell.user_ns
        for q in self.config["questions"]:
            snapshot.restore()
            self.emit(question=q)
            self.emit(result=self.run_question(hidden, ns, q))
        self.emit(done=True)


def _close_figures() -> None:
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        with contextlib.suppress(Exception):
            plt.close("all")


def _child_main(config_path: str) -> None:
    """Entry point of the grading process (``python -c``): never returns normally."""
    config = json.loads(Path(config_path).read_text())
    code = 0
    try:
        _Child(config).main()
    except BaseException as err:  # noqa: BLE001 - report, then leave without running student atexit
        print(f"grading process failed: {type(err).__name__}: {err}", file=sys.__stdout__, flush=True)
        code = 1
    finally:
        with contextlib.suppress(Exception):
            sys.__stdout__.flush()
        os._exit(code)


# === command line ==============================================================================

def _release_cmd(args) -> int:
    out = release(args.out, args.notebooks, repo=args.repo)
    print(f"student version: {out / 'student'}\nautograder: {out / 'autograder'}")
    return 0


def _grade_cmd(args) -> int:
    limits = Limits(cell_s=args.cell_timeout, question_s=args.question_timeout, total_s=args.total_timeout)
    try:
        result = grade(args.submission, args.json, args.hidden, limits, args.jobs)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    single = "tests" in result
    for name, r in ([(args.submission, result)] if single else result.items()):
        total = sum(t["max_score"] for t in r["tests"])
        print(f"{name}: {r['score']:g} / {total:g}")
        for t in r["tests"]:
            print(f"  {t['name']}: {t['score']:g} / {t['max_score']:g}  {t['output'].splitlines()[0] if t['output'] else ''}")
    return 0


def register_cli(subparsers) -> dict:
    """Add ``release`` and ``grade`` to ``python -m p2p_lab``; returns {name: (help, fn)}."""
    commands = {"release": ("write the student version and the autograder bundle", _release_cmd),
                "grade": ("grade submitted notebooks into Gradescope JSON", _grade_cmd)}
    p = subparsers.add_parser("release", help=commands["release"][0])
    p.add_argument("out", help="output folder (gets student/ and autograder/)")
    p.add_argument("--notebooks", default=None, help="folder of master notebooks (default: notebooks/)")
    p.add_argument("--repo", default=None, help="GitHub owner/name the student version is published "
                   "at: the notebooks' Colab badges and install lines point there (default: p2p_lab.COLAB_REPO)")
    p = subparsers.add_parser("grade", help=commands["grade"][0])
    p.add_argument("submission", help="a notebook, or a folder of notebooks")
    p.add_argument("--json", default=None, help="results file (or folder, for a folder of notebooks)")
    p.add_argument("--hidden", default=None, help="folder of hidden_<assignment>.py (default: tests/hidden)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks of a folder graded in parallel")
    d = Limits()
    p.add_argument("--cell-timeout", type=float, default=d.cell_s, help="seconds per notebook cell")
    p.add_argument("--question-timeout", type=float, default=d.question_s, help="seconds per question")
    p.add_argument("--total-timeout", type=float, default=d.total_s, help="seconds per submission")
    return commands
