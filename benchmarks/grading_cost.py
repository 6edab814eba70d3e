"""What grading a broken submission costs, against a correct one, for every notebook.

For each master notebook: the correct submission (the master itself, graded by ``record_timings``,
which also writes the limits later gradings use), then the same notebook with its first exercise's
solution replaced by a body that raises, one that ends the process (``os._exit``) and one that
loops forever. Each is graded alone with the grader's default ``Limits`` (timed: the checks and demos
get ten times the master's time, at least 30 s); ``--untimed`` grades the broken ones again as
every cell was limited before timings existed (180 s a cell). Printed: seconds and score of each,
and each broken one's time over the correct one's.

    python benchmarks/grading_cost.py [--notebooks 01 05] [--untimed] [--threads 1]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import shutil
import tempfile
import time
from pathlib import Path

import nbformat

from p2p_lab.grading import BEGIN, REPO_ROOT, Limits, grade_notebook, record_timings, strip_solutions

BROKEN = {"raising": "raise RuntimeError('not yet')", "exiting": "import os\nos._exit(1)",
          "hanging": "while True:\n    pass"}


def broken(nb, body: str):
    """A copy of ``nb`` with its first exercise's solution replaced by ``body``."""
    nb = copy.deepcopy(nb)
    cell = next(c for c in nb.cells if c.cell_type == "code" and BEGIN in c.source)
    cell.source = strip_solutions(cell.source, "", body)
    return nb


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--notebooks", nargs="*", default=None, help="notebook number prefixes (default: all)")
    p.add_argument("--untimed", action="store_true", help="also grade the broken ones with 180 s a cell")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the grading process")
    args = p.parse_args(argv)
    masters = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    if args.notebooks:
        masters = [m for m in masters if m.name[:2] in args.notebooks]
    limits = Limits(threads=args.threads)
    rows = []
    with tempfile.TemporaryDirectory(prefix="grading_cost_") as tmp:
        hidden = Path(tmp) / "hidden"
        shutil.copytree(REPO_ROOT / "tests" / "hidden", hidden)
        timings = {}
        for master in masters:  # one at a time: the correct time is the master's grading alone
            timings.update(record_timings([master], hidden, limits))
        for master in masters:
            nb = nbformat.read(master, as_version=4)
            assignment = nb.metadata["p2p_lab"]["assignment"]
            row = {"notebook": master.stem, "correct_s": timings[assignment]["total"]}
            for kind, body in BROKEN.items():
                path = Path(tmp) / kind / master.name
                path.parent.mkdir(exist_ok=True)
                nbformat.write(broken(nb, body), path)
                for label, lim in [("", limits)] + ([("untimed_", dataclasses.replace(limits, timed=False))]
                                                    if args.untimed and kind != "raising" else []):
                    t = time.perf_counter()
                    r = grade_notebook(path, hidden, lim)
                    row[f"{label}{kind}_s"] = round(time.perf_counter() - t, 1)
                    row[f"{label}{kind}_score"] = f"{r['score']:g}/{sum(x['max_score'] for x in r['tests']):g}"
                    row[f"{label}{kind}_ratio"] = round(row[f"{label}{kind}_s"] / row["correct_s"], 2)
            print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            rows.append(row)
    summary = {"rows": rows, "limits": dataclasses.asdict(limits)}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
