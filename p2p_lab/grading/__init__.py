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

What a broken submission costs: about what a correct one does, however many later cells call the
broken function (the public check, then demos that use it), so that a class's submissions stay
within Gradescope's time-out. A raising function costs nothing extra: each cell calling it raises at
once and the others go on. A function whose same call is still running at half a cell's (or a hidden
test's) limit and at the limit is *stopped* there (:mod:`.child`): every later call raises
:class:`~p2p_lab.grading.child.FunctionStopped` at once, so a hanging exercise costs one cell limit,
not one per calling cell plus its hidden test's limit (a slow cell calling a fast function many
times stops that cell only). A function that ends the grading process (``os._exit``; a loop that
swallows the alarm, killed by the watchdog) is named before the process ends, and the one rerun
(:mod:`.parent`) stops it as soon as the cell defining it ran: one rerun, not one per calling cell
(four calling cells used to spend every attempt, and nothing was graded). And the one limit is
short: ``release`` times the master solutions (:func:`record_timings`), and a submitted cell whose
source is a master cell's (a check, a demo) may take ten times the master's time there, at least
30 s, instead of the default 180 s that the slowest demo needs. ``benchmarks/grading_cost.py``
measures a correct, a raising, an exiting and a hanging submission of every notebook.

Threat model: the grader survives accidents and the usual hostile patterns (raising cells,
infinite loops, megabytes of prints, ``sys.exit``, deleted or shadowed names, redefined checks,
monkeypatched ``p2p_lab`` / ``torch`` functions, calling the package's implementation). It runs
student code in the same process as the hidden tests, as otter-grader does, so it is no sandbox
against a determined attacker: run it in a container (Gradescope does).

Modules: :mod:`.notebooks` (solution markers, question ids, cell sources: what the others read from
a notebook), :mod:`.parent` (:class:`Limits`, :func:`grade`: running and watching the grading
process, Gradescope's JSON), :mod:`.child` (what runs inside the grading process), :mod:`.bundle`
(student notebooks, :func:`release`) and :mod:`.cli` (the ``release`` and ``grade`` commands);
:func:`forbid` and the helpers hidden tests call student code through live in
:mod:`p2p_lab.forbidding`, below both the checks and grading. Every name below is importable from
``p2p_lab.grading``.
"""
from __future__ import annotations

from ..forbidding import ForbiddenCall, call_student, forbid, student_function
from .bundle import point_at_repo, release, strip_solutions, student_notebook
from .cli import register_cli
from .notebooks import BEGIN, END, PACKAGE_DIR, REPO_ROOT
from .parent import (TIMINGS, Limits, default_hidden_dir, find_assignment, grade, grade_notebook, read_questions,
                     record_timings)

_questions = read_questions  # the name tests/test_notebooks.py imports

__all__ = ["ForbiddenCall", "forbid", "call_student", "student_function", "release",
           "student_notebook", "grade", "Limits", "find_assignment", "record_timings", "read_questions",
           "register_cli"]
