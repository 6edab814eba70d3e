"""Every edit kind of Prompt-to-Prompt on a shapes-world model, at the engine's defaults.

For each kind and seed a source scene is drawn from the shapes world and captioned; the target
prompt makes one edit. Every edit runs with the engine's defaults (no per-kind tuning) and is
read back by the scorer (:func:`p2p_lab.shapes.read_image`). Only sources the model rendered as
their prompt asks are scored (``n`` says how many).

* swap_colour / swap_shape / swap_background: one word replaced;
* insert_content: a colour word inserted ("a circle ..." -> "a red circle ...");
* insert_style: an appearance word inserted ("a red circle ..." -> "a shaded red circle ...");
* reweight: one descriptor's cross-attention scaled by c in SCALES (the appearance word
  "shaded", read back as the object's shading strength; on a model without appearance words, the
  size word "big", read back as the radius);
* local_blend: a shape swap on a spotted background (a plain one on a model without appearance
  words), with and without a local blend on the shape words.

A swap or insertion succeeds when the edited picture reads as the target and everything else
keeps the source's reading (shape, colour, background, object style, background style);
``shift_px`` is the median centroid movement of the edited object; ``failures`` counts, over the
failed edits, each attribute read wrongly, and ``target_alone_wrong`` how many of the failed edits'
target prompts the model also misses when sampled alone from the same seed (no injection): those
failures are the model's prompt following, the rest the edit's (what limits the success rate). ``reweight``: the measured
attribute at each scale (mean over seeds), its Spearman correlation with c, and
``response_share`` = (response at the largest c - at the smallest) / the attribute's range in the
world. ``local_blend``: the mean change of the pixels outside the blend's mask (its last step's)
without the blend, divided by the same with it (``outside_change_ratio``, the issue's figure); and
the same outside both objects as the scorer reads them, grown by 2 px (``outside_objects_ratio``:
does the blend keep the background, wherever its mask reaches). What limits the ratio: the decoder
spreads a latent change beyond its mask, so ``decoder_floor`` is the change outside the mask when the
plain edit's latents are pasted into the source's inside the mask and decoded (both pictures
re-encoded), and ``best_possible_ratio`` = the change without the blend over that floor: the most any
latent blend with that mask could reach.

    python benchmarks/edit_kinds.py [--models data/shapes-ldm OTHER ...] [--seeds 50 | --quick]

With one model the last line printed is its JSON object; with several, one JSON object keyed by
model path (each model's line is printed as it finishes).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import numpy as np
from scipy import ndimage, stats

from p2p_lab import shapes
from p2p_lab.metrics import centroid_shift
from p2p_lab.model import knows_appearance_words

SCALES = (-1.0, 0.0, 0.5, 1.0, 2.0, 4.0)
KINDS = ("swap_colour", "swap_shape", "swap_background", "insert_content", "insert_style")


def make_pair(kind: str, rng: np.random.Generator) -> tuple[str, str, str]:
    """(source prompt, target prompt, the attribute the edit changes) for one edit kind."""
    scene = shapes.sample_scene(rng)
    obj, bg = scene.objects[0], scene.background
    new_colour = str(rng.choice([c for c in shapes.COLORS if c not in (obj.color, bg)]))
    src = f"a {obj.color} {obj.shape} on a {bg} background"
    if kind == "swap_colour":
        return src, f"a {new_colour} {obj.shape} on a {bg} background", "color"
    if kind == "swap_shape":
        new = str(rng.choice([s for s in shapes.SHAPES if s != obj.shape]))
        return src, f"a {obj.color} {new} on a {bg} background", "shape"
    if kind == "swap_background":
        return src, f"a {obj.color} {obj.shape} on a {new_colour} background", "background"
    if kind == "insert_content":
        return f"a {obj.shape} on a {bg} background", src, "color"
    if kind == "insert_style":
        return src, f"a shaded {obj.color} {obj.shape} on a {bg} background", "style"
    raise ValueError(f"unknown edit kind {kind!r}; the kinds are {KINDS}")


def reading_of(image) -> dict | None:
    """What the scorer reads, as comparable attributes (None unless exactly one object)."""
    r = shapes.read_image(image)
    if len(r.objects) != 1:
        return None
    o = r.objects[0]
    return {"shape": o.shape, "color": o.color, "style": o.style, "background": r.background,
            "background_style": r.background_style, "object": o}


def mismatches(src: dict, tgt: dict | None, target: str, changed: str) -> list[str]:
    """The attributes the edited picture gets wrong: ``changed`` not read as the target asks, or any
    other attribute not read as in the source; ["unreadable"] when the scorer reads no single object."""
    if tgt is None:
        return ["unreadable"]
    want = shapes.parse_caption(target)
    w = want["objects"][0]
    asked = {"shape": w["shape"], "color": w["color"], "style": w["style"], "background": want["background"]}
    return [k for k in ("shape", "color", "style", "background", "background_style")
            if tgt[k] != (asked[k] if k == changed else src[k])]


def edit_success(src: dict, tgt: dict | None, target: str, changed: str) -> bool:
    """The target reads as asked, and every attribute but ``changed`` as in the source."""
    return not mismatches(src, tgt, target, changed)


def scored_edits(pipe, edit, kind, seeds):
    """For each seed whose source the model renders as its prompt asks: (seed, source, target, changed,
    the edit's result, the source's and the edited picture's readings, the attributes it gets wrong)."""
    for seed in seeds:
        source, target, changed = make_pair(kind, np.random.default_rng([7, seed]))
        res = edit(pipe, source, target, seed=seed)
        src = reading_of(res.source_image)
        if src is None or not shapes.score_caption(res.source_image, source)["all"]:
            continue
        tgt = reading_of(res.target_images[0])
        yield seed, source, target, changed, res, src, tgt, mismatches(src, tgt, target, changed)


def target_alone_right(pipe, edit, res, source, target, seed) -> bool:
    """Does the model draw ``target`` sampled alone from ``seed`` (no injection; the source from ``res``)?"""
    alone = edit(pipe, source, target, seed=seed, cross_tau=0.0, self_tau=0.0, cache=res.cache)
    return bool(shapes.score_caption(alone.target_images[0], target)["all"])


def run_kind(pipe, edit, kind, seeds) -> dict:
    ok, shifts, n, failures, alone_wrong = [], [], 0, Counter(), 0
    for seed, source, target, _, res, src, tgt, wrong in scored_edits(pipe, edit, kind, seeds):
        n += 1
        ok.append(not wrong)
        failures.update(wrong)
        if wrong:  # the model's own miss, or the edit's?
            alone_wrong += not target_alone_right(pipe, edit, res, source, target, seed)
        if tgt is not None:
            shifts.append(centroid_shift(src["object"], tgt["object"]))
    return {"success": round(float(np.mean(ok)), 4) if ok else None,
            "shift_px": round(float(np.median(shifts)), 3) if shifts else None, "n": n,
            "failures": dict(sorted(failures.items())), "target_alone_wrong": alone_wrong}


def reweight_prompt(word: str, seed: int) -> str:
    """The re-weighting benchmark's prompt for this seed: a drawn scene with ``word`` before the object."""
    scene = shapes.sample_scene(np.random.default_rng([11, seed]))
    obj = scene.objects[0]
    return f"a {word} {obj.color} {obj.shape} on a {scene.background} background"


def run_reweight(pipe, edit, styles: bool, seeds) -> dict:
    word = "shaded" if styles else "big"
    lo, hi = (0.0, shapes.SHADE_RANGE[1]) if styles else (shapes.RADIUS["small"][0], shapes.RADIUS["big"][1])
    rows = []
    for seed in seeds:
        prompt = reweight_prompt(word, seed)
        res = edit(pipe, prompt, [prompt] * len(SCALES), reweight=[{word: c} for c in SCALES], seed=seed)
        reads = [reading_of(img) for img in res.target_images]
        if any(r is None for r in reads):
            continue
        rows.append([r["object"].shading if styles else r["object"].radius for r in reads])
    if not rows:
        return {"word": word, "scales": list(SCALES), "response": None, "spearman": None,
                "response_share": None, "n": 0}
    resp = np.mean(rows, axis=0)
    return {"word": word, "scales": list(SCALES), "response": [round(float(v), 4) for v in resp],
            "spearman": round(float(stats.spearmanr(SCALES, resp)[0]), 4),
            "response_share": round(float((resp[-1] - resp[0]) / (hi - lo)), 4), "n": len(rows)}


def pasted_inside(pipe, source_image, edited_image, mask) -> np.ndarray:
    """The source picture's latents with the edited picture's pasted inside ``mask`` (latent grid),
    decoded, both encoded by the model's own encoder: the best a latent blend with that mask can do.
    What it changes outside the mask is the decoder's doing alone (its convolutions and attention
    carry the inside's change outwards), a floor under the blended edit's change there."""
    import torch

    from p2p_lab import ldm

    z_src, z_edit = ldm.encode(pipe, torch.cat([ldm.image_to_tensor(source_image),
                                                ldm.image_to_tensor(edited_image)]))
    keep = torch.from_numpy(mask).to(z_src.dtype)
    decoded = ldm.decode(pipe, torch.stack([z_src, z_src * (1 - keep) + z_edit * keep]))
    a, b = ldm.to_numpy(decoded)
    return source_image + (b - a)  # the paste's own change, laid on the source picture


def run_local_blend(pipe, edit, styles: bool, seeds) -> dict:
    """The issue's figure: outside the blend's mask (its last step's, upsampled to the image), the
    mean change from the source without the blend over the same with it; and a stricter one: the
    same outside both objects as the scorer reads them (grown by 2 px), wherever the mask reaches."""
    without, with_, obj_without, obj_with, floor = [], [], [], [], []
    for seed in seeds:
        source, target, _ = make_pair("swap_shape", np.random.default_rng([13, seed]))
        if styles:
            source, target = (p.replace(" on a ", " on a spotted ") for p in (source, target))
        words = [source.split()[2], target.split()[2]]  # the old and the new shape word
        plain = edit(pipe, source, target, seed=seed)
        blended = edit(pipe, source, target, seed=seed, local_blend=words, cache=plain.cache)
        src = shapes.read_image(plain.source_image)
        if len(src.objects) != 1:
            continue
        diff = lambda img, where: float(np.abs(img - plain.source_image)[where].mean())  # noqa: E731
        m = blended.blend_mask[0]
        scale = plain.source_image.shape[0] // m.shape[0]
        outside_mask = ~np.kron(m, np.ones((scale, scale), bool))
        if outside_mask.any():
            without.append(diff(plain.target_images[0], outside_mask))
            with_.append(diff(blended.target_images[0], outside_mask))
            floor.append(diff(pasted_inside(pipe, plain.source_image, plain.target_images[0], m), outside_mask))
        region = src.objects[0].mask.copy()
        for img in (plain.target_images[0], blended.target_images[0]):
            for o in shapes.read_image(img).objects:
                region |= o.mask
        outside = ~ndimage.binary_dilation(region, iterations=2)
        obj_without.append(diff(plain.target_images[0], outside))
        obj_with.append(diff(blended.target_images[0], outside))

    def ratio(a, b):
        return None if not a else round(float(np.mean(a) / max(np.mean(b), 1e-6)), 3)

    def mean(a):
        return round(float(np.mean(a)), 5) if a else None

    return {"outside_change_ratio": ratio(without, with_), "outside_change_without": mean(without),
            "outside_change_with": mean(with_), "n": len(without),
            "decoder_floor": mean(floor), "best_possible_ratio": ratio(without, floor),
            "outside_objects_ratio": ratio(obj_without, obj_with), "outside_objects_without": mean(obj_without),
            "outside_objects_with": mean(obj_with), "n_objects": len(obj_without)}


def evaluate(path: str, n_seeds: int) -> dict:
    from p2p_lab.model import load_pipeline
    from p2p_lab.p2p import edit

    pipe = load_pipeline(path, device="cpu")
    styles, seeds = knows_appearance_words(pipe), range(n_seeds)
    out = {k: (run_kind(pipe, edit, k, seeds) if styles or k != "insert_style" else None) for k in KINDS}
    out["reweight"] = run_reweight(pipe, edit, styles, seeds)
    out["local_blend"] = run_local_blend(pipe, edit, styles, seeds)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", default=["data/shapes-ldm"], help="pipeline folders, measured in turn")
    ap.add_argument("--seeds", type=int, default=50, help="seeds per edit kind")
    ap.add_argument("--quick", action="store_true", help="12 seeds per kind")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    n = 12 if args.quick else args.seeds
    results = {}
    for path in args.models:
        t0 = time.time()
        results[path] = evaluate(path, n)
        print(f"{path} ({time.time() - t0:.0f} s): {json.dumps(results[path])}", flush=True)
    final = results[args.models[0]] if len(args.models) == 1 else results
    print(json.dumps(final))
    return final


if __name__ == "__main__":
    main()
