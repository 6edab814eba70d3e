"""Peak resident memory and wall time of grading each notebook's master solution, as the
autograder runs it: ``python -m p2p_lab.grading grade`` (what ``run_autograder`` calls) on one CPU
(``taskset -c CPU``, one torch thread); ``--entry p2p_lab`` grades through ``python -m p2p_lab``.

Gradescope's default container has 0.5 CPU and 768 MB; the grading parent and the grading process
it starts are resident together, so the peak reported is of their sum (sampled every 0.1 s with
psutil), beside the grading process's own peak.

    python benchmarks/grading_memory.py [--notebooks 01 05] [--cpu 1] [--entry p2p_lab.grading]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent


def tree_rss(proc: psutil.Process) -> tuple[int, int]:
    """(RSS of ``proc`` and all its descendants together, the largest single one's), in bytes."""
    sizes = []
    for p in [proc] + proc.children(recursive=True):
        try:
            sizes.append(p.memory_info().rss)
        except psutil.Error:
            pass
    return sum(sizes), max(sizes, default=0)


def grade_one(notebook: Path, hidden: Path, out: Path, cpu: int | None, entry: str = "p2p_lab.grading") -> dict:
    cmd = [sys.executable, "-m", entry, "grade", str(notebook), "--json", str(out), "--hidden", str(hidden)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu)] + cmd
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=str(REPO_ROOT), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ps, peak_sum, peak_one = psutil.Process(proc.pid), 0, 0
    while proc.poll() is None:
        try:
            total, one = tree_rss(ps)
        except psutil.Error:
            break
        peak_sum, peak_one = max(peak_sum, total), max(peak_one, one)
        time.sleep(0.1)
    seconds = time.perf_counter() - started
    result = json.loads(out.read_text())
    return {"notebook": notebook.stem, "seconds": round(seconds, 1),
            "peak_mb_all": round(peak_sum / 2 ** 20), "peak_mb_largest": round(peak_one / 2 ** 20),
            "score": f"{result['score']:g}/{sum(t['max_score'] for t in result['tests']):g}"}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--notebooks", nargs="*", default=None, help="notebook number prefixes (default: all)")
    p.add_argument("--cpu", type=int, default=1, help="the one CPU to grade on (taskset); -1: any")
    p.add_argument("--entry", default="p2p_lab.grading", choices=["p2p_lab.grading", "p2p_lab"],
                   help="the module run with -m (run_autograder's is p2p_lab.grading)")
    args = p.parse_args(argv)
    masters = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
    if args.notebooks:
        masters = [m for m in masters if m.name[:2] in args.notebooks]
    rows = []
    with tempfile.TemporaryDirectory(prefix="grading_memory_") as tmp:
        hidden = Path(tmp) / "hidden"
        shutil.copytree(REPO_ROOT / "tests" / "hidden", hidden)
        for master in masters:
            row = grade_one(master, hidden, Path(tmp) / f"{master.stem}.json", None if args.cpu < 0 else args.cpu,
                             args.entry)
            print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)
            rows.append(row)
    summary = {"rows": rows, "cpu": args.cpu, "entry": args.entry, "python": sys.version.split()[0]}
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
