"""Editing real images: DDIM, null-text, negative-prompt and DirectInversion side by side (notebook 06).

The real images are the shapes world's renders (:func:`p2p_lab.shapes.render`: drawn by the
generator, never sampled by the model), so every one comes with its exact ground truth. Scene k has
shape ``SHAPES[k % 3]`` and colour ``COLORS[k % 7]`` (every shape-colour pair once in 21 scenes),
its size, background and place drawn from the world's priors. Each is inverted with each method
(:func:`p2p_lab.p2p.invert`) at the model's default steps and guidance, and edited from the
inversion by Prompt-to-Prompt (:func:`p2p_lab.p2p.edit`, its defaults) into a colour swap, a shape
swap and a background swap (one edit, three targets). Per method:

* recon_psnr_db: PSNR of the reconstruction (the edit's source row) against the input image;
  ceiling_psnr_db: the autoencoder's own reconstruction D(E(x)) against the input, the most any
  inversion can reach; recon_below_ceiling_db: their difference; recon_psnr_vs_autoencoder_db:
  the reconstruction against D(E(x));
* edit_success, centroid_shift_px, bg_psnr_db: scored as ``benchmarks/p2p_eval.py`` scores them
  (its ``score``), against the input image: the scorer reads the target attribute and the source's
  others; the edited object's centroid against the input's object; PSNR of the region that should
  not change (outside both objects for object edits, the object for background edits);
  bg_psnr_vs_source_db: the same region against the edit's own source row (the reconstruction),
  which is what p2p_eval compares with for a generated source;
* seconds_inversion, seconds_inversion_edit: wall-clock seconds per image on this CPU.

Beside them: "fixed_seed", the targets sampled from the inverted z*_T (DDIM inversion at w = 1,
the pivot every method shares) with no attention control; and "generated_source", the same edit of
the same captions from a generated source (seed k; scored only where the model drew the source
right, as p2p_eval does). The DDIM drift sweep (the first ``--drift-scenes`` scenes): DDIM
inversion at w = 1 sampled back at w, and inverted under w itself, for each w of ``--drift-guidance``.

    python benchmarks/inversion_eval.py [--scenes 105] [--threads 1] [--quick]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from p2p_eval import EDITS, score  # noqa: E402  (one scorer for generated and real sources)

from p2p_lab import shapes  # noqa: E402
from p2p_lab.metrics import psnr  # noqa: E402
from p2p_lab.p2p.inversion import METHODS as REGISTRY  # noqa: E402

METHODS = tuple(REGISTRY)  # every registered inversion method
KEYS = ("edit_success", "centroid_shift_px", "bg_psnr_db", "bg_psnr_vs_source_db")
# PIE-Bench with Prompt-to-Prompt (Ju et al. 2024, Table 1): structure distance (lower is better)
# and background PSNR order the methods the same way, best first
PIE_BENCH_ORDER = ("direct", "null-text", "negative-prompt", "ddim")


def make_scene(k: int, seed: int = 0) -> tuple[shapes.Scene, dict[str, str]]:
    """Scene k (shape k % 3, colour k % 7, size, place and background from the world's priors) and
    its edits' targets (:func:`swap_targets`), drawn from one random stream per scene."""
    rng = np.random.default_rng([seed, k])
    scene = shapes.sample_scene(rng, shape=shapes.SHAPES[k % len(shapes.SHAPES)],
                                color=list(shapes.COLORS)[k % len(shapes.COLORS)])
    return scene, swap_targets(scene, rng)


def swap_targets(scene: shapes.Scene, rng: np.random.Generator) -> dict[str, str]:
    """{edit kind: target caption}: one word of the scene's caption swapped per kind of edit."""
    obj = scene.objects[0]
    colours = [c for c in shapes.COLORS if c not in (obj.color, scene.background)]
    new_shape = str(rng.choice([s for s in shapes.SHAPES if s != obj.shape]))
    new_obj = lambda **kw: shapes.Scene((dataclasses.replace(obj, **kw),), scene.background)  # noqa: E731
    return {"color": shapes.caption(new_obj(color=str(rng.choice(colours)))),
            "shape": shapes.caption(new_obj(shape=new_shape)),
            "background": shapes.caption(shapes.Scene(scene.objects, str(rng.choice(colours))))}


def score_edits(x, src_obj, source_row, images, targets: dict) -> dict:
    """Per kind of edit: p2p_eval's scores against the input ``x``, and the unchanged region's PSNR
    against the edit's own source row."""
    out = {}
    for (kind, target), img in zip(targets.items(), images):
        s = score(kind, x, src_obj, img, target)
        s["bg_psnr_vs_source_db"] = score(kind, source_row, src_obj, img, target)["bg_psnr_db"]
        out[kind] = s
    return out


def mean(rows: list[dict], keys) -> dict:
    out = {}
    for key in keys:
        vals = [r[key] for r in rows if r.get(key) is not None]
        out[key] = round(float(np.mean(vals)), 4) if vals else None
    out["n"] = len(rows)
    return out


def run_scene(pipe, k: int, args) -> dict:
    """Every method's numbers for scene k."""
    import torch

    from p2p_lab import ldm
    from p2p_lab.p2p import edit, invert

    scene, targets = make_scene(k, args.seed)
    x = shapes.render(scene)[0].astype(np.float32) / 255  # (32, 32, 3)
    source = shapes.caption(scene)
    src_obj = shapes.read_image(x).objects[0]
    run = dict(num_inference_steps=args.steps, guidance_scale=args.guidance)
    taus = dict(cross_tau=args.cross_tau, self_tau=args.self_tau, context_tau=args.context_tau)
    row = {"scene": source, "methods": {}}
    ceiling = None
    for method in args.methods:
        t0 = time.perf_counter()
        own = {"num_inner_steps": args.inner_steps} if "num_inner_steps" in REGISTRY[method].options else {}
        inv = invert(pipe, x, source, method, **own, **run)
        t1 = time.perf_counter()
        res = edit(pipe, source, list(targets.values()), inversion=inv, **taus)
        t2 = time.perf_counter()
        if ceiling is None:
            ceiling = inv.autoencoded(pipe)
            row["ceiling_psnr_db"] = psnr(x, ceiling)
            z_T, steps, w = inv.z_T, inv.num_inference_steps, inv.guidance_scale
        row["methods"][method] = {
            "recon_psnr_db": psnr(x, res.source_image),
            "recon_psnr_vs_autoencoder_db": psnr(ceiling, res.source_image),
            "seconds_inversion": t1 - t0, "seconds_inversion_edit": t2 - t0,
            "edits": score_edits(x, src_obj, res.source_image, res.target_images, targets)}
    with torch.no_grad():  # the fixed seed from the inverted noise: no attention control
        base = ldm.sample(pipe, list(targets.values()), None, steps, w, latents=z_T.repeat(len(targets), 1, 1, 1),
                          progress=False).numpy()
    row["fixed_seed"] = score_edits(x, src_obj, x, base, targets)
    gen = edit(pipe, source, list(targets.values()), seed=k, **run, **taus)
    reading = shapes.read_image(gen.source_image)
    if len(reading.objects) == 1 and shapes.score_caption(gen.source_image, source)["all"]:
        row["generated_source"] = score_edits(gen.source_image, reading.objects[0], gen.source_image,
                                              gen.target_images, targets)
    return row


def drift_sweep(pipe, args) -> list[dict]:
    """DDIM inversion's drift against the guidance scale: inverted at w = 1 or under w, sampled at w."""
    from p2p_lab.p2p import invert

    out = []
    for w in args.drift_values:
        for inverse in ("1", "w") if w != 1 else ("1",):
            recon, below, drift = [], [], []
            for k in range(args.drift_scenes):
                scene = make_scene(k, args.seed)[0]
                x = shapes.render(scene)[0].astype(np.float32) / 255
                inv = invert(pipe, x, shapes.caption(scene), "ddim", args.steps, w,
                             inverse_guidance=1.0 if inverse == "1" else w)
                rec, ae = inv.reconstruction(pipe), inv.autoencoded(pipe)
                recon.append(psnr(x, rec)), below.append(psnr(x, ae) - psnr(x, rec))
                drift.append(float(inv.drift(pipe)[-1]))
            out.append({"guidance": w, "inverted_at": 1.0 if inverse == "1" else w,
                        "recon_psnr_db": round(float(np.mean(recon)), 3),
                        "recon_below_ceiling_db": round(float(np.mean(below)), 3),
                        "final_latent_drift_rms": round(float(np.mean(drift)), 4), "n": len(recon)})
    return out


def aggregate(rows: list[dict], methods) -> dict:
    result = {"methods": {}}
    ceiling = float(np.mean([r["ceiling_psnr_db"] for r in rows]))
    result["ceiling_psnr_db"] = round(ceiling, 3)
    for m in methods:
        per = [r["methods"][m] for r in rows]
        edits = [e for p in per for e in p["edits"].values()]
        s = mean(edits, KEYS)
        rec = float(np.mean([p["recon_psnr_db"] for p in per]))
        s.update(recon_psnr_db=round(rec, 3), recon_below_ceiling_db=round(ceiling - rec, 3) + 0.0,  # no -0.0
                 recon_psnr_vs_autoencoder_db=round(float(np.mean([p["recon_psnr_vs_autoencoder_db"] for p in per])), 3),
                 seconds_inversion=round(float(np.mean([p["seconds_inversion"] for p in per])), 4),
                 seconds_inversion_edit=round(float(np.mean([p["seconds_inversion_edit"] for p in per])), 4),
                 by_edit={kind: mean([p["edits"][kind] for p in per], KEYS) for kind in EDITS})
        result["methods"][m] = s
    for name in ("fixed_seed", "generated_source"):
        scored = [r[name] for r in rows if name in r]
        result[name] = mean([e for r in scored for e in r.values()], KEYS)
        result[name]["by_edit"] = {kind: mean([r[kind] for r in scored], KEYS) for kind in EDITS}
        result[name]["sources"] = len(scored)
    return result


def judge(result: dict) -> dict:
    """The issue's goals, each as measured."""
    ms = result["methods"]
    gen_bg = result["generated_source"]["bg_psnr_db"]
    best = max(ms, key=lambda m: ms[m]["recon_psnr_db"])
    goals = {"best_reconstruction": best,
             "best_within_1db_of_ceiling": ms[best]["recon_below_ceiling_db"] <= 1.0,
             "edits_meet_goal": {m: bool(s["edit_success"] is not None and s["edit_success"] >= 0.9 and gen_bg is not None
                                         and s["bg_psnr_db"] is not None and s["bg_psnr_db"] >= gen_bg - 2.0)
                                 for m, s in ms.items()}}
    if "null-text" in ms:
        nt = ms["null-text"]
        goals["cheaper_than_null_text"] = {
            m: {"speedup": round(nt["seconds_inversion"] / s["seconds_inversion"], 1),
                "reconstruction_at_least_as_good": s["recon_psnr_db"] >= nt["recon_psnr_db"]}
            for m, s in ms.items() if m != "null-text"}
        goals["a_method_10x_cheaper_at_equal_or_better_reconstruction"] = any(
            v["speedup"] >= 10 and v["reconstruction_at_least_as_good"] for v in goals["cheaper_than_null_text"].values())
    order = {"reconstruction": sorted(ms, key=lambda m: -ms[m]["recon_psnr_db"]),
             "background_psnr": sorted(ms, key=lambda m: -(ms[m]["bg_psnr_db"] or 0)),
             "centroid_shift": sorted(ms, key=lambda m: ms[m]["centroid_shift_px"] or 1e9),
             "edit_success": sorted(ms, key=lambda m: -(ms[m]["edit_success"] or 0))}
    pie = [m for m in PIE_BENCH_ORDER if m in ms]
    goals["order"] = order
    goals["pie_bench_order"] = pie
    goals["same_order_as_pie_bench"] = {k: v == pie for k, v in order.items() if k != "edit_success"}
    return goals


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", type=int, default=105, help="rendered scenes (21 cover every shape and colour)")
    p.add_argument("--seed", type=int, default=0, help="which draw of scenes")
    p.add_argument("--steps", type=int, default=None, help="default: the model's (p2p_lab.model.sampling_defaults)")
    p.add_argument("--guidance", type=float, default=None, help="default: the model's")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--inner-steps", type=int, default=10, help="null-text's Adam steps per step (the paper's 10)")
    p.add_argument("--cross-tau", type=float, default=0.8)
    p.add_argument("--self-tau", type=float, default=0.4)
    p.add_argument("--context-tau", type=float, default=0.0, help="not in the paper; 0 (the engine's default) keeps it off")
    p.add_argument("--drift-scenes", type=int, default=21, help="scenes of the DDIM drift sweep (0: none)")
    p.add_argument("--drift-guidance", default="1,2,4,7.5", help="guidance scales of the drift sweep")
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 scenes, 3 steps, 2 Adam steps, a small sweep")
    args = p.parse_args(argv)
    if args.quick:
        args.scenes, args.steps = min(args.scenes, 3), min(args.steps or 3, 3)
        args.inner_steps, args.drift_scenes, args.drift_guidance = min(args.inner_steps, 2), min(args.drift_scenes, 1), "1,4"
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    args.drift_values = [float(w) for w in args.drift_guidance.split(",")] if args.drift_scenes else []
    return args


def coverage(n: int, seed: int) -> dict:
    scenes = [make_scene(k, seed)[0] for k in range(n)]
    count = lambda values: {v: values.count(v) for v in sorted(set(values))}  # noqa: E731
    return {"shapes": count([s.objects[0].shape for s in scenes]), "colors": count([s.objects[0].color for s in scenes]),
            "backgrounds": count([s.background for s in scenes]), "sizes": count([s.objects[0].size for s in scenes])}


def main(argv=None, pipe=None) -> dict:
    import torch

    from p2p_lab.model import load_pipeline, sampling_defaults

    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = pipe or load_pipeline(args.model)
    default = sampling_defaults(pipe)
    args.steps = args.steps or default.num_inference_steps
    args.guidance = default.guidance_scale if args.guidance is None else args.guidance
    t0 = time.time()
    rows = []
    for k in range(args.scenes):
        rows.append(run_scene(pipe, k, args))
        if (k + 1) % 10 == 0 or k + 1 == args.scenes:
            print(f"{k + 1}/{args.scenes} scenes, {time.time() - t0:.0f} s", flush=True)
    result = aggregate(rows, args.methods)
    result["drift"] = drift_sweep(pipe, args)
    result["goals"] = judge(result)
    result["coverage"] = coverage(args.scenes, args.seed)
    result["settings"] = {"scenes": args.scenes, "seed": args.seed, "steps": args.steps, "guidance": args.guidance,
                          "inner_steps": args.inner_steps, "cross_tau": args.cross_tau, "self_tau": args.self_tau,
                          "context_tau": args.context_tau,
                          "threads": torch.get_num_threads(), "seconds": round(time.time() - t0, 1)}
    report(result)
    return result


def report(result: dict) -> None:
    print(f"ceiling (autoencoder D(E(x)) vs the input): {result['ceiling_psnr_db']} dB")
    head = (f"{'method':17s} {'recon dB':>8s} {'below ceil':>10s} {'success':>8s} {'shift px':>8s} "
            f"{'bg dB':>6s} {'bg vs src':>9s} {'s inv':>7s} {'s inv+edit':>10s}")
    print(head)
    for m, s in result["methods"].items():
        print(f"{m:17s} {s['recon_psnr_db']:8.2f} {s['recon_below_ceiling_db']:10.2f} {s['edit_success']!s:>8s} "
              f"{s['centroid_shift_px']!s:>8s} {s['bg_psnr_db']!s:>6s} {s['bg_psnr_vs_source_db']!s:>9s} "
              f"{s['seconds_inversion']:7.3f} {s['seconds_inversion_edit']:10.3f}")
    for name in ("fixed_seed", "generated_source"):
        s = result[name]
        print(f"{name:17s} {'':8s} {'':10s} {s['edit_success']!s:>8s} {s['centroid_shift_px']!s:>8s} "
              f"{s['bg_psnr_db']!s:>6s} {s['bg_psnr_vs_source_db']!s:>9s}   ({s['sources']} sources)")
    print("per edit (success / shift px / bg dB):")
    for m, s in [*result["methods"].items(), ("fixed_seed", result["fixed_seed"]),
                 ("generated_source", result["generated_source"])]:
        parts = [f"{k} {v['edit_success']}/{v['centroid_shift_px']}/{v['bg_psnr_db']}" for k, v in s["by_edit"].items()]
        print(f"  {m:17s} " + "  ".join(parts))
    if result["drift"]:
        print("DDIM drift (inverted at w_inv, sampled back at w):")
        for d in result["drift"]:
            print(f"  w {d['guidance']:4.1f} w_inv {d['inverted_at']:4.1f}: recon {d['recon_psnr_db']:.2f} dB "
                  f"({d['recon_below_ceiling_db']:.2f} below the ceiling), final latent drift {d['final_latent_drift_rms']}")
    print("goals:", json.dumps(result["goals"]))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
