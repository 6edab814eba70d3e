"""The command line of grading: ``python -m p2p_lab release`` and ``python -m p2p_lab grade``
(:func:`register_cli`)."""
from __future__ import annotations

import sys

from .bundle import release
from .parent import HIDDEN_VISIBILITY, VISIBILITIES, Limits, grade


def _release_cmd(args) -> int:
    if not args.no_timings:
        print("timing the master solutions with the autograder (some minutes)...", flush=True)
    out = release(args.out, args.notebooks, repo=args.repo, timings=not args.no_timings, jobs=args.jobs,
                  visibility=args.visibility)
    print(f"student version: {out / 'student'}\nautograder: {out / 'autograder'}")
    return 0


def _grade_cmd(args) -> int:
    limits = Limits(cell_s=args.cell_timeout, question_s=args.question_timeout, total_s=args.total_timeout)
    try:
        result = grade(args.submission, args.json, args.hidden, limits, args.jobs, args.visibility)
    except FileNotFoundError as err:
        print(err, file=sys.stderr)
        return 2
    single = "tests" in result
    for name, r in ([(args.submission, result)] if single else result.items()):
        total = sum(t["max_score"] for t in r["tests"])
        print(f"{name}: {r['score']:g} / {total:g}")
        for t in r["tests"]:
            first = t['output'].splitlines()[0] if t['output'] else ''
            print(f"  {t['name']}: {t['score']:g} / {t['max_score']:g}  {first}")
    return 0


def _visibility_arg(p, where: str) -> None:
    p.add_argument("--visibility", choices=VISIBILITIES, default=HIDDEN_VISIBILITY,
                   help=f"when Gradescope shows students the hidden tests' results ({where}; default "
                        f"{HIDDEN_VISIBILITY}); questions marked public in QUESTIONS are always visible")


def register_cli(subparsers) -> dict:
    """Add ``release`` and ``grade`` to ``python -m p2p_lab``; returns {name: (help, fn)}."""
    commands = {"release": ("write the student version and the autograder bundle", _release_cmd),
                "grade": ("grade submitted notebooks into Gradescope JSON", _grade_cmd)}
    p = subparsers.add_parser("release", help=commands["release"][0])
    p.add_argument("out", help="output folder (gets student/ and autograder/)")
    p.add_argument("--notebooks", default=None, help="folder of master notebooks (default: notebooks/)")
    p.add_argument("--repo", default=None, help="GitHub owner/name the student version is published "
                   "at: the notebooks' Colab badges and install lines point there "
                   "(default: p2p_lab.COLAB_REPO)")
    p.add_argument("--no-timings", action="store_true", help="skip timing the master solutions: "
                   "every cell then gets the default limits when graded")
    p.add_argument("--jobs", type=int, default=1, help="master notebooks timed in parallel")
    _visibility_arg(p, "the autograder's run_autograder passes it to every grading")
    p = subparsers.add_parser("grade", help=commands["grade"][0])
    p.add_argument("submission", help="a notebook, or a folder of notebooks")
    p.add_argument("--json", default=None, help="results file (or folder, for a folder of notebooks)")
    p.add_argument("--hidden", default=None, help="folder of hidden_<assignment>.py (default: tests/hidden)")
    p.add_argument("--jobs", type=int, default=1, help="notebooks of a folder graded in parallel")
    _visibility_arg(p, "written into each result")
    d = Limits()
    p.add_argument("--cell-timeout", type=float, default=d.cell_s, help="seconds per notebook cell")
    p.add_argument("--question-timeout", type=float, default=d.question_s, help="seconds per question")
    p.add_argument("--total-timeout", type=float, default=d.total_s, help="seconds per submission")
    return commands
