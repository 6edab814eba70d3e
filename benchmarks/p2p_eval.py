"""How well do edits keep the scene? Fixed seed vs mask-based editing vs Prompt-to-Prompt.

For each of colour swap, shape swap and background swap, and for each seed, a source scene is drawn
from the shapes world, its caption is the source prompt, and the target prompt changes one
attribute. Only sources the model rendered correctly (``score_caption(...)["all"]``) are scored,
and the output says how many that was. Metrics per method:

* edit_success: the scorer finds the target attribute and the source's other attributes;
* centroid_shift_px: distance between the source object's and the edited object's centroids;
* bg_psnr_db: PSNR (dB, images in [0, 1]) of the region that should not change: outside both
  objects' masks for object edits, the source object for background edits (capped at 60 dB;
  one pixel of anti-aliased edge is left out).

Mask-based editing gets the true mask: the source object's mask (as read from the image) dilated
by ``--dilate`` pixels for object edits, the background (outside it) for background edits.
"p2p" is the engine with ``--context-tau`` (default 0.5: the target's unchanged tokens keep the
source's text embeddings for the first half of the steps, the course's opt-in addition);
"p2p_paper" is the same edit with ``context_tau=0``, the engine's default and the paper's method.
Three sweeps rerun P2P with the source cached: over cross_tau, over context_tau, and over the
swapped word's own cross_tau with the other tokens at ``--cross-tau`` (``word_tau_sweep``: the
per-word alpha of the paper, which frees the new word early so that it can draw its own outline).

    python benchmarks/p2p_eval.py [--seeds 50] [--steps 25] [--quick]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scipy import ndimage

from p2p_lab import shapes
from p2p_lab.metrics import centroid_shift, psnr
from p2p_lab.p2p import edit, fixed_seed, mask_blend

EDITS = ("color", "shape", "background")
METHODS = ("fixed_seed", "mask_blend", "p2p", "p2p_paper")
EDGE = 1  # pixels of anti-aliased object edge left out of the unchanged region


def make_pair(kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """A source caption and a target caption that differs in one attribute ``kind``."""
    scene = shapes.sample_scene(rng)
    obj = scene.objects[0]
    if kind == "color":
        new = [c for c in shapes.COLORS if c not in (obj.color, scene.background)]
        scene2 = shapes.Scene((shapes.ShapeSpec(obj.shape, str(rng.choice(new)), obj.size, obj.center, obj.radius),), scene.background)
    elif kind == "shape":
        new = [s for s in shapes.SHAPES if s != obj.shape]
        scene2 = shapes.Scene((shapes.ShapeSpec(str(rng.choice(new)), obj.color, obj.size, obj.center, obj.radius),), scene.background)
    else:
        new = [c for c in shapes.COLORS if c not in (obj.color, scene.background)]
        scene2 = shapes.Scene(scene.objects, str(rng.choice(new)))
    return shapes.caption(scene), shapes.caption(scene2)


def swapped_word(source: str, target: str) -> str:
    """The target's word that replaces a source word (the captions differ in one word)."""
    diff = [t for s, t in zip(source.split(), target.split()) if s != t]
    if len(source.split()) != len(target.split()) or len(diff) != 1:
        raise ValueError(f"{source!r} -> {target!r} is not a one-word swap")
    return diff[0]


def true_mask(kind: str, src_obj, dilate: int) -> np.ndarray:
    """The editable region handed to mask-based editing."""
    if kind == "background":
        return ~src_obj.mask
    return ndimage.binary_dilation(src_obj.mask, iterations=dilate) if dilate else src_obj.mask


def score(kind: str, src_img, src_obj, tgt_img, target: str) -> dict:
    """edit_success, centroid_shift_px and bg_psnr_db of one edited image."""
    ok = shapes.score_caption(tgt_img, target)["all"]
    got = shapes.read_image(tgt_img).objects
    obj = got[0] if got else None
    shift = None if obj is None else centroid_shift(obj, src_obj)
    if kind == "background":
        region = src_obj.mask if obj is None else src_obj.mask & obj.mask
        region = ndimage.binary_erosion(region, iterations=EDGE)
    else:
        region = src_obj.mask if obj is None else src_obj.mask | obj.mask
        region = ~ndimage.binary_dilation(region, iterations=EDGE)
    return {"edit_success": float(ok), "centroid_shift_px": shift, "bg_psnr_db": psnr(src_img, tgt_img, region)}


def summarize(rows: list[dict]) -> dict:
    out = {}
    for key in ("edit_success", "centroid_shift_px", "bg_psnr_db"):
        vals = [r[key] for r in rows if r[key] is not None]
        out[key] = round(float(np.mean(vals)), 4) if vals else None
    out["n"] = len(rows)
    return out


def run_pair(pipe, kind, source, target, seed, args, sweep):
    """Scores of every method for one source/target pair, or None if the source is wrong."""
    kw = dict(seed=seed, num_inference_steps=args.steps, guidance_scale=args.guidance)
    base = fixed_seed(pipe, source, target, **kw)
    src_img = base[0]
    reading = shapes.read_image(src_img)
    if len(reading.objects) != 1 or not (args.all_sources or shapes.score_caption(src_img, source)["all"]):
        return None
    src_obj = reading.objects[0]
    blended = mask_blend(pipe, source, target, true_mask(kind, src_obj, args.dilate), **kw)[1]
    taus = dict(cross_tau=args.cross_tau, self_tau=args.self_tau)
    res = edit(pipe, source, target, context_tau=args.context_tau, **taus, **kw)
    paper = edit(pipe, source, target, context_tau=0.0, cache=res.cache, **taus, **kw)
    out = {"fixed_seed": score(kind, src_img, src_obj, base[1], target),
           "mask_blend": score(kind, src_img, src_obj, blended, target),
           "p2p": score(kind, src_img, src_obj, res.target_images[0], target),
           "p2p_paper": score(kind, src_img, src_obj, paper.target_images[0], target),
           "sweep": {}, "context_sweep": {}}
    for tau in sweep:
        img = edit(pipe, source, target, cross_tau=tau, self_tau=min(args.self_tau, tau),
                   context_tau=args.context_tau, cache=res.cache, **kw)
        out["sweep"][tau] = score(kind, src_img, src_obj, img.target_images[0], target)
    for c in args.context_values:
        img = edit(pipe, source, target, context_tau=c, cache=res.cache, **taus, **kw)
        out["context_sweep"][c] = score(kind, src_img, src_obj, img.target_images[0], target)
    out["word_tau_sweep"] = {}
    word = swapped_word(source, target)
    for t in args.word_taus:
        per_word = {"default_": args.cross_tau, word: t}
        img = edit(pipe, source, target, cross_tau=per_word, self_tau=args.self_tau,
                   context_tau=args.context_tau, cache=res.cache, **kw)
        out["word_tau_sweep"][t] = score(kind, src_img, src_obj, img.target_images[0], target)
    return out


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=50, help="seeds per edit type")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=None, help="default: the model's (p2p_lab.model.sampling_defaults)")
    p.add_argument("--cross-tau", type=float, default=0.8)
    p.add_argument("--self-tau", type=float, default=0.4)
    p.add_argument("--context-tau", type=float, default=0.5,
                   help="context_tau of the 'p2p' method (the 'p2p_paper' method uses 0, the engine's default)")
    p.add_argument("--sweep", default="0,0.4,0.8,1.0", help="cross_tau values (self_tau = min(self_tau, tau))")
    p.add_argument("--context-sweep", default="0,0.25,0.5,1.0", help="context_tau values")
    p.add_argument("--word-sweep", default="0.2,0.4,0.6",
                   help="cross_tau values of the swapped word (the others at --cross-tau)")
    p.add_argument("--dilate", type=int, default=2, help="pixels added around the object for mask_blend")
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--all-sources", action="store_true",
                   help="also score sources the model got wrong (one object read back); for smoke tests")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 seeds, 3 steps, 2 sweep values")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.sweep, args.context_sweep = min(args.seeds, 2), min(args.steps, 3), "0,1", "0,1"
        args.word_sweep = "0.4"
    args.context_values = [float(t) for t in args.context_sweep.split(",")]
    args.word_taus = [float(t) for t in args.word_sweep.split(",")] if args.word_sweep else []
    return args


def main(argv=None, pipe=None) -> dict:
    import torch

    from p2p_lab.model import load_pipeline

    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = pipe or load_pipeline(args.model)
    sweep = [float(t) for t in args.sweep.split(",")]
    t0, per_kind, tried = time.time(), {}, {}
    for kind in EDITS:
        rows, tried[kind] = [], 0
        for seed in range(args.seeds):
            source, target = make_pair(kind, np.random.default_rng(1000 * EDITS.index(kind) + seed))
            tried[kind] += 1
            with torch.no_grad():
                r = run_pair(pipe, kind, source, target, seed, args, sweep)
            if r is not None:
                rows.append(r)
        per_kind[kind] = rows
        print(f"{kind:10s}: {len(rows)}/{tried[kind]} sources scored")
    result = aggregate(per_kind, sweep, tried, args.all_sources)
    result["settings"] = {"seeds": args.seeds, "all_sources": args.all_sources, "steps": args.steps, "guidance": args.guidance,
                          "cross_tau": args.cross_tau, "self_tau": args.self_tau,
                          "context_tau": args.context_tau,
                          "dilate": args.dilate, "seconds": round(time.time() - t0, 1)}
    report(result)
    return result


def aggregate(per_kind: dict, sweep, tried, all_sources=False) -> dict:
    everything = [r for rows in per_kind.values() for r in rows]
    result = {m: summarize([r[m] for r in everything]) for m in METHODS}
    result["by_edit"] = {k: {m: summarize([r[m] for r in rows]) for m in METHODS} for k, rows in per_kind.items()}
    result["tau_sweep"] = [{"cross_tau": t, **summarize([r["sweep"][t] for r in everything])} for t in sweep]
    contexts = list(everything[0]["context_sweep"]) if everything else []
    result["context_sweep"] = [{"context_tau": c, **summarize([r["context_sweep"][c] for r in everything])}
                               for c in contexts]
    result["context_sweep_by_edit"] = {k: [{"context_tau": c, **summarize([r["context_sweep"][c] for r in rows])}
                                           for c in contexts] for k, rows in per_kind.items()}
    words = list(everything[0]["word_tau_sweep"]) if everything else []
    result["word_tau_sweep"] = [{"word_tau": t, **summarize([r["word_tau_sweep"][t] for r in everything])}
                                for t in words]
    result["word_tau_sweep_by_edit"] = {k: [{"word_tau": t, **summarize([r["word_tau_sweep"][t] for r in rows])}
                                            for t in words] for k, rows in per_kind.items()}
    used = {k: len(v) for k, v in per_kind.items()}
    result["sources_used"] = used
    result["note"] = (f"scored only sources the model rendered correctly"
                      f"{' (NOT: --all-sources scores every one-object source)' if all_sources else ''}: "
                      f"{sum(used.values())} of {sum(tried.values())} ({used} of {tried})")
    return result


def report(result: dict) -> None:
    print(result["note"])
    print(f"{'method':12s} {'edit':>10s} {'success':>8s} {'shift px':>9s} {'PSNR dB':>8s}")
    for kind, methods in [("all", {m: result[m] for m in METHODS}), *result["by_edit"].items()]:
        for m, s in methods.items():
            print(f"{m:12s} {kind:>10s} {s['edit_success']!s:>8s} {s['centroid_shift_px']!s:>9s} {s['bg_psnr_db']!s:>8s}")
    print("tau sweep (P2P, all edits):")
    for row in result["tau_sweep"]:
        print(f"  cross_tau {row['cross_tau']:.2f}: success {row['edit_success']} shift {row['centroid_shift_px']} psnr {row['bg_psnr_db']}")
    print("context_tau sweep (P2P, per edit type):")
    for kind, rows in [("all", result["context_sweep"]), *result["context_sweep_by_edit"].items()]:
        for row in rows:
            print(f"  {kind:10s} context_tau {row['context_tau']:.2f}: success {row['edit_success']} "
                  f"shift {row['centroid_shift_px']} psnr {row['bg_psnr_db']}")
    print("swapped word's own cross_tau, the others at the default (P2P, per edit type):")
    for kind, rows in [("all", result["word_tau_sweep"]), *result["word_tau_sweep_by_edit"].items()]:
        for row in rows:
            print(f"  {kind:10s} word tau {row['word_tau']:.2f}: success {row['edit_success']} "
                  f"shift {row['centroid_shift_px']} psnr {row['bg_psnr_db']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
