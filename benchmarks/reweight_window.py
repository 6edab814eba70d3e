"""What limits re-weighting "shaded": the steps it lasts, or the tokens after the word?

``benchmarks/edit_kinds.py`` re-weights "shaded" in "a shaded red circle on a blue background" by c
in (-1, 0, 0.5, 1, 2, 4) at the engine's defaults and reads the object's shading back. The response
moves one way (Spearman 1.0) but spans less than half the world's range: at c = 0 and c = -1 the
object stays shaded. Two suspects, each tested by one knob of the engine, seed for seed:

* the window: a re-weighting scales the word's column only while the target attends with the
  source's maps, the first ``cross_tau`` of the steps (0.8 by default, as in the paper's code);
  after that the target attends with its own maps, unscaled. Arm ``to_the_end``: cross_tau = 1.
* the later tokens: CLIP's text encoder is causal, so every token after "shaded" carries it, and
  scaling one column cannot take that away. Arms ``big_source`` and ``big_source_context``: the
  source prompt has "big" where the target has "shaded" (same token layout, a flat object); with
  ``context_tau=1`` (notebook 05's appendix) every target token that is the same as in the source
  ("a", "red", ..., end and padding) takes the source's embedding, which never saw "shaded", so
  only the word's own column can say "shaded". The pair differs only in what the later tokens carry.

Arm ``defaults`` is edit_kinds' figure. Per arm: ``response`` (mean shading at each c, 0 for a flat
object; negative: lighter than flat, a tint), its Spearman correlation with c, ``response_share`` as
edit_kinds defines it, and ``flat_share`` (the share of pictures the scorer reads as flat) at each c.
Seeds count where every arm's every picture reads as one object.

    python benchmarks/reweight_window.py [--model data/shapes-ldm] [--seeds 50] [--threads 2]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edit_kinds import SCALES, reading_of, reweight_prompt  # noqa: E402

from p2p_lab import shapes  # noqa: E402

ARMS = {  # source prompt ("same": the target itself; "big": "big" where the target says "shaded"), knobs
    "defaults": ("same", dict(cross_tau=0.8)),
    "to_the_end": ("same", dict(cross_tau=1.0)),
    "big_source": ("big", dict(cross_tau=0.8)),
    "big_source_context": ("big", dict(cross_tau=0.8, context_tau=1.0)),
}


def prompts(seed: int) -> tuple[str, str]:
    """(target, the same with "big" for "shaded"): edit_kinds' re-weighting scene for this seed."""
    return reweight_prompt("shaded", seed), reweight_prompt("big", seed)


def run(pipe, edit, seeds) -> dict:
    rows = {arm: [] for arm in ARMS}
    flat = {arm: [] for arm in ARMS}
    for seed in seeds:
        target, big = prompts(seed)
        reads, caches = {}, {}
        for arm, (which, knobs) in ARMS.items():
            source = target if which == "same" else big
            res = edit(pipe, source, [target] * len(SCALES), reweight=[{"shaded": c} for c in SCALES],
                       seed=seed, cache=caches.get(which), **knobs)
            caches[which] = res.cache
            reads[arm] = [reading_of(img) for img in res.target_images]
        if any(r is None for arm in ARMS for r in reads[arm]):
            continue
        for arm in ARMS:
            rows[arm].append([r["object"].shading for r in reads[arm]])
            flat[arm].append([r["style"] is None for r in reads[arm]])
    out = {"scales": list(SCALES), "n": len(rows["defaults"])}
    for arm, (which, knobs) in ARMS.items():
        if not rows[arm]:
            out[arm] = None
            continue
        resp = np.mean(rows[arm], axis=0)
        flat_curve = np.ptp(resp) == 0  # no response at all: Spearman is undefined
        out[arm] = {"source": which, **knobs, "response": [round(float(v), 4) for v in resp],
                    "spearman": None if flat_curve else round(float(stats.spearmanr(SCALES, resp)[0]), 4),
                    "response_share": round(float((resp[-1] - resp[0]) / shapes.SHADE_RANGE[1]), 4),
                    "flat_share": [round(float(v), 3) for v in np.mean(flat[arm], axis=0)]}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="data/shapes-ldm", help="a shapes-world pipeline folder")
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    import torch

    from p2p_lab.model import knows_appearance_words, load_pipeline
    from p2p_lab.p2p import edit

    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    if not knows_appearance_words(pipe):
        raise SystemExit(f"{args.model} has no appearance words (a flat-world model): there is no 'shaded' to "
                         f"re-weight; pass a model trained with --p-style > 0")
    t0 = time.time()
    out = run(pipe, edit, range(args.seeds))
    out["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
