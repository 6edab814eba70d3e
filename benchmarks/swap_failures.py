"""What limits the swaps: each swap that fails at the engine's defaults, re-run with one knob changed.

``benchmarks/edit_kinds.py`` runs each swap (colour, shape, background) at the engine's defaults
(the paper's settings: source cross-attention for 80 % of the steps, self-attention for 40 %). This
script takes the same swaps (same prompts and seeds), keeps the ones that fail, and asks of each:

* ``alone``: does the model draw the target prompt when sampled alone from the same seed (no
  injection at all)? If not, the failure is the model's prompt following, not the edit's;
* which single change of the windows makes it succeed: a shorter cross-attention window
  (``cross_tau`` 0.6, 0.4, 0.2: the source's maps hand less of the old outline on), no
  self-attention injection (``self_tau`` 0: the source's layout is not imposed), or both.

Each failure is then put in one class, in this order: ``model_miss`` (the target alone is wrong),
``cross_window`` (a shorter cross-attention window fixes it), ``self_window`` (self_tau 0 fixes it),
``other``. The settings here are a diagnosis, not a tuning: the issue's figures stay at the defaults.

    python benchmarks/swap_failures.py [--model data/shapes-ldm] [--seeds 50] [--threads 2]

The last line printed is one JSON object: per kind, the swaps scored (``n``), the failures, each
failure's row (seed, prompts, what was read wrong, which settings fix it, its class), and the counts
per class.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edit_kinds import mismatches, reading_of, scored_edits, target_alone_right  # noqa: E402

SWAPS = ("swap_colour", "swap_shape", "swap_background")
SETTINGS = {"cross 0.6": dict(cross_tau=0.6), "cross 0.4": dict(cross_tau=0.4), "cross 0.2": dict(cross_tau=0.2),
            "self 0": dict(self_tau=0.0), "cross 0.4, self 0": dict(cross_tau=0.4, self_tau=0.0)}
SHORTER_CROSS = ("cross 0.6", "cross 0.4", "cross 0.2")


def classify(alone_right: bool, fixed_by: list[str]) -> str:
    """One class per failure: the model's miss, the cross-attention window's, the self-attention's, or other."""
    if not alone_right:
        return "model_miss"
    if any(s in fixed_by for s in SHORTER_CROSS):
        return "cross_window"
    if "self 0" in fixed_by:
        return "self_window"
    return "other"


def diagnose(pipe, edit, kind, seeds) -> dict:
    rows, n = [], 0
    for seed, source, target, changed, res, src, _, wrong in scored_edits(pipe, edit, kind, seeds):
        n += 1
        if not wrong:
            continue
        alone_right = target_alone_right(pipe, edit, res, source, target, seed)
        fixed_by = [name for name, knobs in SETTINGS.items()
                    if not mismatches(src, reading_of(edit(pipe, source, target, seed=seed, cache=res.cache,
                                                           **knobs).target_images[0]), target, changed)]
        rows.append({"seed": seed, "source": source, "target": target, "wrong": wrong,
                     "target_alone_right": alone_right, "fixed_by": fixed_by,
                     "class": classify(alone_right, fixed_by)})
    return {"n": n, "failed": len(rows), "classes": dict(sorted(Counter(r["class"] for r in rows).items())),
            "rows": rows}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/shapes-ldm", help="a shapes-world pipeline folder")
    ap.add_argument("--seeds", type=int, default=50, help="seeds per swap kind (edit_kinds' default)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    import torch

    from p2p_lab.model import load_pipeline
    from p2p_lab.p2p import edit

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    t0 = time.time()
    out = {kind: diagnose(pipe, edit, kind, range(args.seeds)) for kind in SWAPS}
    for kind in SWAPS:
        print(f"{kind}: {out[kind]['failed']} of {out[kind]['n']} failed; {out[kind]['classes']}", flush=True)
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
