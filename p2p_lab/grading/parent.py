"""Grading, the parent side: :class:`Limits`, :func:`grade` and :func:`grade_notebook`, which run
and watch the grading process (:mod:`.child`), read its events and write Gradescope's JSON.

When a cell or a hidden test ends or hangs the process (``os._exit``, a crash, a loop that swallows
the alarm: the watchdog kills it at the phase's limit plus a grace), the process is run again
without that cell (or with that question scored 0), at most ``Limits.attempts`` runs in all. Every
rerun is handed the student functions earlier processes stopped (``stopped`` events, see
:mod:`.child`), so a function that killed the process in one cell fails at once in every later cell
of the rerun instead of killing it again: one rerun per such function, not one per calling cell.
Only a new phase (a ``cell`` or ``question`` event) restarts the watchdog's clock.

Limits come from the master solution where it was timed: :func:`record_timings` (run by
``release``) grades the master notebooks and writes each cell's and each hidden test's time to
``timings.json`` beside the hidden tests; a submission's cell with the same source as a timed
master cell (the checks and demos: students edit only the exercise cells) then gets
``Limits.factor`` times the master's time, at least ``Limits.floor_s`` and at most ``cell_s``, so a
hanging exercise costs its checking cell some 30 s instead of the three-minute default (which the
slowest demo cell of the course needs). Cells the master does not have keep ``cell_s``.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .notebooks import QUESTION_ID, REPO_ROOT, question_of

_ASSIGNMENT = re.compile(r"^[A-Za-z0-9_-]+$")  # assignment names are file stems


@dataclasses.dataclass
class Limits:
    """Time and output limits of one submission's grading."""

    cell_s: float = 180.0  # one notebook cell
    question_s: float = 60.0  # one question's hidden test
    startup_s: float = 180.0  # importing torch & co and loading the hidden tests
    total_s: float = 1200.0  # the whole submission, reruns included
    output_chars: int = 20_000  # kept per cell / per question / for the child's raw output
    timed: bool = True  # cells and tests the master was timed on get limits from its times:
    factor: float = 10.0  # this many times the master's time ...
    floor_s: float = 30.0  # ... and at least this (timings.json, see record_timings)
    attempts: int = 4  # reruns after a cell or a test kills or hangs the grading process
    memory_gb: float | None = None  # address-space limit of the grading process (None: none)
    threads: int | None = None  # torch threads of the grading process (None: usable_cpus());
    # ``grade`` with jobs > 1 sets usable_cpus() // jobs: two notebooks graded side by side with 2 threads
    # each on 2 cores spun for over 10 minutes, against 97 s with 1 thread each


CGROUP = Path("/sys/fs/cgroup")  # where a container's CPU quota is read (cgroup v2, or v1 below it)


def usable_cpus(cgroup=CGROUP) -> int:
    """The CPUs the grading process may really use, at least 1: the container's CPU quota (cgroup v2
    ``cpu.max``, or v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) rounded down, and at most the
    CPUs it may be scheduled on (``os.sched_getaffinity``); never the host's count, which in a
    container is the machine's. Gradescope's default container (0.5 CPU) gives 1: torch's default
    there, one thread per host core, spun threads against each other (notebook 05: 627 s instead
    of 32 s)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, int(quota))
    return max(1, cpus)


def cgroup_cpu_quota(cgroup=CGROUP) -> float | None:
    """CPUs of the cgroup's quota (0.5 for 50 ms per 100 ms), or None: no quota, or no cgroup files."""
    root = Path(cgroup)
    try:
        fields = (root / "cpu.max").read_text().split()  # v2: "max 100000" or "50000 100000"
    except OSError:
        fields = None
    if fields is not None:
        try:
            quota, period = (None, 1) if fields[0] == "max" else (int(fields[0]), int(fields[1]))
        except (IndexError, ValueError):
            return None
        return quota / period if quota and quota > 0 and period > 0 else None
    for folder in (root / "cpu", root / "cpu,cpuacct", root):  # v1: quota -1 means none
        try:
            quota = int((folder / "cpu.cfs_quota_us").read_text())
            period = int((folder / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return quota / period if quota > 0 and period > 0 else None
    return None


VISIBILITIES = ("hidden", "after_due_date", "after_published", "visible")  # Gradescope's
HIDDEN_VISIBILITY = "after_due_date"  # hidden tests' results, unless the instructor says otherwise


def check_visibility(visibility: str) -> str:
    """``visibility`` if Gradescope knows it, else a ValueError naming the ones it does."""
    if visibility not in VISIBILITIES:
        raise ValueError(f"visibility {visibility!r} is not one of Gradescope's: {', '.join(VISIBILITIES)} "
                         f"(hidden tests default to {HIDDEN_VISIBILITY!r}; a question marked \"public\": True "
                         f"in QUESTIONS is always 'visible')")
    return visibility


def result_visibility(spec: dict, visibility: str) -> str:
    """What a question's result shows students: 'visible' for a public question (its QUESTIONS
    entry says ``"public": True``), else the hidden tests' ``visibility``."""
    return "visible" if spec.get("public") else visibility


TIMINGS = "timings.json"  # beside the hidden tests: {assignment: {"cells": {key: s}, "questions": {q: s},
#                                                                "total": the master's grading, s}}


def _timed_limits(hidden_dir: Path, assignment: str, limits: Limits) -> tuple[dict, dict]:
    """({cell key: limit}, {question: limit}) from the master's recorded times, if any."""
    try:
        recorded = json.loads((hidden_dir / TIMINGS).read_text()).get(assignment) or {}
    except (OSError, ValueError, AttributeError):
        return {}, {}

    def scaled(times, cap):
        if not isinstance(times, dict):
            return {}
        return {str(k): round(min(cap, max(limits.floor_s, limits.factor * float(v))), 1)
                for k, v in times.items() if isinstance(v, (int, float)) and v >= 0}
    return scaled(recorded.get("cells"), limits.cell_s), scaled(recorded.get("questions"), limits.question_s)


def record_timings(notebooks, hidden_dir, limits: Limits | None = None, jobs: int = 1) -> dict:
    """Grade the master ``notebooks`` against ``hidden_dir`` (without recorded limits) and write
    each one's cell and hidden-test times into ``hidden_dir/timings.json`` (what later grading
    scales into limits; other assignments' times there stay). Refuses, with the failures, if a master does not score full marks: its times
    would not be a correct solution's. Returns {assignment: times}."""
    hidden_dir = Path(hidden_dir)
    limits = dataclasses.replace(limits or Limits(), timed=False)  # the default limits
    with tempfile.TemporaryDirectory(prefix="p2p_timings_") as tmp:
        for nb in notebooks:
            (Path(tmp) / Path(nb).name).write_bytes(Path(nb).read_bytes())
        results = grade(tmp, Path(tmp) / "results", hidden_dir, limits, jobs)
    timings, failures = {}, []
    for path, r in sorted(results.items()):
        lost = [t["name"] for t in r["tests"] if t["score"] < t["max_score"]]
        if lost or not r["tests"]:
            failures.append(f"{Path(path).name}: {', '.join(lost) or 'no graded questions'} "
                            f"({r['output'].strip()[:300]})")
        else:
            timings[r["extra_data"]["assignment"]] = dict(r["extra_data"]["seconds"], total=r["execution_time"])
    if failures:
        raise ValueError("the master solutions must score full marks before their times can set the "
                         "grader's limits; not so:\n  " + "\n  ".join(failures))
    path = hidden_dir / TIMINGS
    recorded = json.loads(path.read_text()) if path.exists() else {}  # other assignments' stay
    recorded.update(timings)
    path.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
    return timings


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
    asked = {question_of(c) for c in nb.cells if question_of(c)}
    if asked and hidden_dir is not None:
        for p in sorted(Path(hidden_dir).glob("hidden_*.py")):
            if asked & set(read_questions(p)):
                return p.stem[len("hidden_"):]
    if path is not None and hidden_dir is not None and (Path(hidden_dir) / f"hidden_{path.stem}.py").exists():
        return path.stem
    raise ValueError("cannot tell which assignment this notebook answers: its metadata has no "
                     "p2p_lab.assignment; submit the notebook file you were given (renaming is fine)")


def read_questions(hidden_file: Path) -> dict:
    """QUESTIONS of a hidden test file, read without running it (a literal dict)."""
    tree = ast.parse(hidden_file.read_text())
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "QUESTIONS" for t in targets):
            questions = ast.literal_eval(node.value)
            for q, spec in questions.items():
                if not QUESTION_ID.match(q) or "points" not in spec or "name" not in spec:
                    raise ValueError(f"{hidden_file.name}: question {q!r} needs an identifier id and "
                                     f"'points' and 'name'")
                if not isinstance(spec.get("public", False), bool):
                    raise ValueError(f"{hidden_file.name}: question {q!r} has 'public': "
                                     f"{spec['public']!r}; write True (results shown at once) or leave it out")
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


def grade_notebook(path, hidden_dir=None, limits: Limits | None = None,
                   visibility: str = HIDDEN_VISIBILITY) -> dict:
    """Grade one submitted notebook; returns Gradescope's results dict. Never raises for a bad
    submission: what went wrong is in the results' ``output``. Each question's result carries
    Gradescope's ``visibility``: ``visibility`` for hidden tests, 'visible' for public questions."""
    check_visibility(visibility)
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
        questions = read_questions(hidden)
    except (SyntaxError, ValueError) as err:
        return _error_result(f"the hidden tests {hidden.name} are broken (an instructor error): {err}",
                             started)
    try:
        timed = _timed_limits(hidden_dir, assignment, limits) if limits.timed else ({}, {})
        results, log, seconds = _run_attempts(path, hidden, questions, limits, timed)
    except Exception as err:  # noqa: BLE001 - the grader itself must never crash on a submission
        results, log, seconds = {}, [f"internal grader error ({type(err).__name__}: {err}); nothing was graded"], {}
    tests = [dict(results.get(q) or _test(f"{q}: {spec['name']}", 0, spec["points"], "not graded"),
                  visibility=result_visibility(spec, visibility)) for q, spec in questions.items()]
    return {"score": round(sum(t["score"] for t in tests), 4),
            "execution_time": round(time.monotonic() - started, 1),
            "output": f"assignment {assignment}\n" + "\n".join(log), "tests": tests,
            "extra_data": {"assignment": assignment, "seconds": seconds}}  # Gradescope keeps it as is


def _run_attempts(path: Path, hidden: Path, questions: dict, limits: Limits, timed=({}, {})):
    """Run the grading process, rerunning it without a cell or test that killed or hung it, and
    with every student function an earlier process stopped (see :mod:`.child`) failing at once."""
    deadline = time.monotonic() + limits.total_s
    skip_cells: list[int] = []
    stopped: list[dict] = []  # {"key", "name", "message"} of functions stopped for good
    results: dict[str, dict] = {}
    log: list[str] = []
    seconds: dict[str, dict] = {"cells": {}, "questions": {}}  # of the first run that timed each
    runs = 0
    for runs in range(1, limits.attempts + 1):
        remaining = [q for q in questions if q not in results]
        if not remaining or time.monotonic() >= deadline:
            break
        events, reason, raw = _run_child(path, hidden, remaining, skip_cells, limits, deadline, stopped,
                                         timed)
        for e in events:
            for kind, name in (("cell_time", "cells"), ("question_time", "questions")):
                if isinstance(e.get(kind), list) and len(e[kind]) == 2:
                    seconds[name].setdefault(str(e[kind][0]), e[kind][1])
        cell_errors = [e for e in events if "cell_error" in e]
        if cell_errors and not log:
            log += [e["cell_error"] for e in cell_errors]
        for e in events:
            s = e.get("stopped")
            if (isinstance(s, dict) and isinstance(s.get("key"), list) and isinstance(s.get("message"), str)
                    and all(s["key"] != t["key"] for t in stopped)):
                stopped.append({"key": s["key"], "name": str(s.get("name")), "message": s["message"]})
                log.append(s["message"])
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
    why = ("the time for this submission ran out" if time.monotonic() >= deadline else
           f"the grading process stopped before its test ran, in each of {runs} run(s)")
    for q in questions:
        if q not in results:
            log.append(f"question {q} was not graded: {why}")
    return results, log, seconds


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
    threads = threads or usable_cpus()  # the caller's own OMP_NUM_THREADS / MKL_NUM_THREADS win
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


def _run_child(path, hidden, questions, skip_cells, limits: Limits, deadline: float, stopped=(),
               timed=({}, {})):
    """One grading process, watched: killed when a phase overruns. -> (events, reason, raw output)."""
    with tempfile.TemporaryDirectory(prefix="p2p_grade_") as tmp:
        events_file = Path(tmp) / "events.jsonl"
        events_file.touch()
        config = dict(notebook=str(path.resolve()), hidden=str(hidden.resolve()), questions=questions,
                      skip_cells=skip_cells, cell_s=limits.cell_s, question_s=limits.question_s,
                      output_chars=limits.output_chars, memory_gb=limits.memory_gb,
                      events=str(events_file), stopped=list(stopped), cell_limits=timed[0],
                      question_limits=timed[1])
        (Path(tmp) / "config.json").write_text(json.dumps(config))
        cmd = [sys.executable, "-c", "import sys; from p2p_lab.grading.child import child_main; "
               "child_main(sys.argv[1])", str(Path(tmp) / "config.json")]
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
            for e in events[seen:]:  # only a new phase restarts the clock (not a report within one)
                if "cell" in e:
                    phase, since = (f"cell {e['cell']}", _limit(e, limits.cell_s)), time.monotonic()
                elif "question" in e:
                    phase, since = (f"question {e['question']}", _limit(e, limits.question_s)), time.monotonic()
            seen = len(events)
        now = time.monotonic()
        if now >= deadline:
            return f"the submission's total time limit of {limits.total_s:.0f} s ran out"
        if now - since > phase[1] + grace:
            return f"{phase[0]} ran past its time limit of {phase[1]:.0f} s"
        time.sleep(0.1)


def _limit(event: dict, default: float) -> float:
    """The phase's limit the child announced (a recorded one), never above the default."""
    value = event.get("limit")
    return min(default, float(value)) if isinstance(value, (int, float)) and value > 0 else default


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


def grade(submission, json_out=None, hidden_dir=None, limits: Limits | None = None, jobs: int = 1,
          visibility: str = HIDDEN_VISIBILITY):
    """Grade a notebook, or every notebook in a directory, and write Gradescope JSON.

    A file: ``json_out`` is the results file (default ``results.json``); returns the results dict.
    A directory: ``json_out`` is a folder (default ``SUBMISSION/results``) receiving one
    ``<name>.json`` per notebook (found recursively); returns {notebook path: results}. A directory
    holding exactly one notebook with ``json_out`` ending in ``.json`` writes that single file
    (Gradescope's layout). ``jobs``: notebooks of a directory graded at the same time.
    ``visibility``: Gradescope's visibility of the hidden tests' results (:data:`VISIBILITIES`;
    default after the due date); public questions' results are always visible.
    """
    check_visibility(visibility)
    submission = Path(submission)
    if not submission.exists():
        raise FileNotFoundError(f"no such submission: {submission}")
    if submission.is_file():
        return _grade_to(submission, Path(json_out or "results.json"), hidden_dir, limits, visibility)
    notebooks = sorted(p for p in submission.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
    if json_out is not None and str(json_out).endswith(".json") and len(notebooks) <= 1:
        if not notebooks:
            result = _error_result("no .ipynb file was submitted", time.monotonic())
            _write_json(Path(json_out), result)
            return result
        return _grade_to(notebooks[0], Path(json_out), hidden_dir, limits, visibility)
    out_dir = Path(json_out or submission / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    from concurrent.futures import ThreadPoolExecutor

    limits = limits or Limits()
    if jobs > 1 and limits.threads is None:  # notebooks graded side by side share the cores
        limits = dataclasses.replace(limits, threads=max(1, usable_cpus() // jobs))

    def one(nb: Path) -> dict:
        stem = "__".join(nb.relative_to(submission).with_suffix("").parts)
        return _grade_to(nb, out_dir / f"{stem}.json", hidden_dir, limits, visibility)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return dict(zip(map(str, notebooks), pool.map(one, notebooks)))


def _grade_to(path: Path, json_out: Path, hidden_dir, limits, visibility: str = HIDDEN_VISIBILITY) -> dict:
    result = grade_notebook(path, hidden_dir, limits, visibility)
    _write_json(json_out, result)
    return result


def _write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
