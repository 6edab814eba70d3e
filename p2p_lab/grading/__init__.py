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

Modules: :mod:`.forbidding` (:func:`forbid` and the helpers hidden tests call student code
through), :mod:`.bundle` (solution markers, student notebooks, :func:`release`), :mod:`.parent`
(:class:`Limits`, :func:`grade`: running and watching the grading process, Gradescope's JSON),
:mod:`.child` (what runs inside the grading process) and :mod:`.cli` (the ``release`` and
``grade`` commands). Every name below is importable from ``p2p_lab.grading``.
"""
from __future__ import annotations

from .bundle import (BEGIN, END, PACKAGE_DIR, REPO_ROOT, point_at_repo, release, strip_solutions,
                     student_notebook)
from .child import _child_main
from .cli import register_cli
from .forbidding import _NAMESPACES, ForbiddenCall, call_student, forbid, student_function
from .parent import Limits, _questions, default_hidden_dir, find_assignment, grade, grade_notebook

__all__ = ["ForbiddenCall", "forbid", "call_student", "student_function", "release",
           "student_notebook", "grade", "Limits", "find_assignment", "register_cli"]
