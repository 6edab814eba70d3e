"""How good is the shipped model? Prints figures; the last line is one JSON object.

    python benchmarks/model_quality.py            # full: 378 base-form samples + 126 size-word samples
    python benchmarks/model_quality.py --quick    # smoke run

Measures, at the model's default steps and guidance (p2p_lab.model.sampling_defaults):
* prompt following: every shape x colour x background combination, scored by the shapes-world
  scorer (object colour, background colour, shape; the size word separately; on a model that
  knows the appearance words, "shaded" objects and "spotted" backgrounds separately, and a
  base-form prompt must also come out flat and plain);
* seconds per image, batch 1, on this machine;
* readable cross-attention: for the shape word and the colour word, the share of attention mass
  inside the object's mask divided by the mask's share of the image, at the finest latent
  resolution, averaged over its cross-attention layers and the steps;
* the autoencoder: PSNR of its reconstructions of clean held-out scenes, and how often the scorer
  reads them fully right (a ceiling on what prompt following can score);
* the fixed-seed baseline: same seed, one word changed (shape, colour or background): how often
  an object moves (> 2 px), the object count changes, or the background changes although the edit
  did not name it.
"""
from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from p2p_lab import ldm, shapes
from p2p_lab.metrics import centroid_shift
from p2p_lab.model import knows_appearance_words, load_pipeline, sampling_defaults
from p2p_lab.train import AttentionCapture, word_groups
from p2p_lab.unet_attention import default_latent_hw


def generate(pipe, prompts, seeds, defaults, control=None):
    """Images (n, H, W, 3) float in [0, 1] by the course's loop (ldm.sample), one z_T per seed
    (batched); ``control``: an attention control installed for the loop."""
    z = torch.cat([ldm.initial_latents(pipe, s) for s in seeds])  # (n, C, h, w)
    return ldm.sample(pipe, list(prompts), None, defaults.num_inference_steps, defaults.guidance_scale,
                      latents=z, progress=False, control=control).numpy()


def prompt_following(pipe, defaults, n_seeds, batch=42):
    combos = [(s, c, b) for s, c, b in itertools.product(shapes.SHAPES, shapes.COLORS, shapes.COLORS) if c != b]
    jobs = [(f"a {c} {s} on a {b} background", seed) for (s, c, b) in combos for seed in range(n_seeds)]
    extra = {"size_word": ([(f"a {z} {c} {s} on a {b} background", 1000 + i)
                            for i, ((s, c, b), z) in enumerate(zip(combos, itertools.cycle(shapes.SIZES)))], "size")}
    if knows_appearance_words(pipe):
        extra["style_word"] = ([(f"a shaded {c} {s} on a {b} background", 2000 + i)
                                for i, (s, c, b) in enumerate(combos)], "style")
        extra["background_style_word"] = ([(f"a {c} {s} on a spotted {b} background", 3000 + i)
                                           for i, (s, c, b) in enumerate(combos)], "background_style")
    groups = [(jobs, [])] + [(g, []) for g, _ in extra.values()]
    for group, sink in groups:
        for i in range(0, len(group), batch):
            prompts, seeds = zip(*group[i:i + batch])
            for img, p in zip(generate(pipe, prompts, seeds, defaults), prompts):
                sink.append(shapes.score_caption(img, p))
    mean = lambda rows, k: float(np.mean([bool(r[k]) for r in rows]))  # noqa: E731
    scores = groups[0][1]
    out = {"n": len(scores), "color": mean(scores, "color"), "background": mean(scores, "background"),
           "shape": mean(scores, "shape"), "all": mean(scores, "all")}
    if knows_appearance_words(pipe):  # a base-form prompt asks for a flat object on a plain background
        out["flat"], out["plain_background"] = mean(scores, "style"), mean(scores, "background_style")
    for (name, (_, key)), (_, rows) in zip(extra.items(), groups[1:]):
        out[f"{name}_n"], out[name] = len(rows), mean(rows, key)
        out[f"{name}_all"] = mean(rows, "all")
    return out


def seconds_per_image(pipe, defaults, repeats=5):
    generate(pipe, ["a red circle on a blue background"], [0], defaults)  # warm-up
    t0 = time.perf_counter()
    for i in range(repeats):
        generate(pipe, ["a red circle on a blue background"], [i], defaults)
    return (time.perf_counter() - t0) / repeats


def attention_readability(pipe, defaults, n=60):
    """Mass-in-mask / area share for the shape and colour words at the finest latent resolution."""
    rng = np.random.default_rng(0)
    styles = knows_appearance_words(pipe)
    scenes = [shapes.sample_scene(rng, p_style=0.5 if styles else 0.0) for _ in range(n)]
    prompts = [shapes.caption(s) for s in scenes]
    capture = AttentionCapture(default_latent_hw(pipe))  # the loop sets n_uncond: conditional rows kept
    images = generate(pipe, prompts, range(n), defaults, control=capture)
    grid = max((g for g, _ in capture.maps), key=lambda g: g[0] * g[1])  # the finest (rows, cols)
    fine = [p for g, p in capture.maps if g == grid]  # conditional rows, finest layers, every step
    maps = torch.stack(fine).mean(0)  # (n, rows * cols, tokens), averaged over layers and steps
    length = pipe.tokenizer.model_max_length
    ratios = {"shape": [], "color": [], "style": []}
    for i, (img, prompt) in enumerate(zip(images, prompts)):
        reading = shapes.read_image(img)
        if len(reading.objects) != 1:
            continue
        mask = torch.from_numpy(reading.objects[0].mask.astype(np.float32))[None, None]
        mask = F.adaptive_avg_pool2d(mask, grid).flatten()  # (rows * cols,) area fraction per latent pixel
        words = prompt.split()
        groups = word_groups(pipe.tokenizer, words, length)
        share = mask.mean().item()
        obj = scenes[i].objects[0]
        for key, word in (("color", obj.color), ("shape", obj.shape), ("style", obj.style)):
            if word is None:
                continue
            m = maps[i][:, groups[words.index(word)]].sum(-1)  # (rows * cols,)
            ratios[key].append(((m * mask).sum() / m.sum()).item() / share)
    return {"resolution": max(grid), "n_scored": len(ratios["shape"]),
            "shape_word_ratio": float(np.mean(ratios["shape"])),
            "color_word_ratio": float(np.mean(ratios["color"])),
            "style_word_ratio": float(np.mean(ratios["style"])) if ratios["style"] else None}


@torch.no_grad()
def autoencoder(pipe, n=1000):
    """Encode (posterior mean) and decode n held-out scenes: PSNR, and what the scorer reads back."""
    from p2p_lab.train import images_to_tensor

    rng = np.random.default_rng(987654)  # not the training scenes' seed
    p = (0.4, 0.35) if knows_appearance_words(pipe) else (0.0, 0.0)  # the world the model was trained on
    scenes = [shapes.sample_scene(rng, p_style=p[0], p_background_style=p[1]) for _ in range(n)]
    x = images_to_tensor(np.stack([shapes.render(s)[0] for s in scenes]))
    vae = pipe.vae
    rec = torch.cat([vae.decode(vae.encode(x[i:i + 200]).latent_dist.mean).sample.clamp(-1, 1)
                     for i in range(0, n, 200)])
    psnr = -10 * torch.log10(((rec - x) / 2).pow(2).flatten(1).mean(1))
    images = ((rec + 1) / 2).permute(0, 2, 3, 1).numpy()
    right = [shapes.score_caption(img, shapes.caption(scene))["all"] for scene, img in zip(scenes, images)]
    return {"n": n, "psnr_db_mean": float(psnr.mean()), "psnr_db_min": float(psnr.min()),
            "read_right": float(np.mean(right))}


def fixed_seed_baseline(pipe, defaults, n=60):
    """Same seed, one word changed: how often does the composition change beyond the edit?"""
    rng = np.random.default_rng(1)
    src, tgt, kinds = [], [], []
    for i in range(n):
        scene = shapes.sample_scene(rng)
        obj, kind = scene.objects[0], ["shape", "color", "background"][i % 3]
        if kind == "shape":
            new = shapes.Scene((shapes.ShapeSpec(next(s for s in rng.permutation(shapes.SHAPES) if s != obj.shape),
                                                 obj.color, obj.size, obj.center, obj.radius),), scene.background)
        elif kind == "color":
            c = next(c for c in rng.permutation(list(shapes.COLORS)) if c not in (obj.color, scene.background))
            new = shapes.Scene((shapes.ShapeSpec(obj.shape, c, obj.size, obj.center, obj.radius),), scene.background)
        else:
            b = next(c for c in rng.permutation(list(shapes.COLORS)) if c not in (obj.color, scene.background))
            new = shapes.Scene(scene.objects, b)
        src.append(shapes.caption(scene))
        tgt.append(shapes.caption(new))
        kinds.append(kind)
    a = generate(pipe, src, range(n), defaults)
    b = generate(pipe, tgt, range(n), defaults)
    changed, shifts = [], []
    for ia, ib, kind in zip(a, b, kinds):
        ra, rb = shapes.read_image(ia), shapes.read_image(ib)
        if len(ra.objects) != len(rb.objects) or not ra.objects:
            changed.append(True)
            continue
        shift = centroid_shift(ra, rb)  # pixels between the main objects' centroids
        shifts.append(shift)
        changed.append(shift > 2.0 or (kind != "background" and ra.background != rb.background))
    return {"n": n, "composition_changed": float(np.mean(changed)),
            "median_centroid_shift_px": float(np.median(shifts)) if shifts else None}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a smoke run with few samples")
    parser.add_argument("--model", default=None, help="pipeline folder (default: the shipped model)")
    args = parser.parse_args()
    pipe = load_pipeline(args.model, device="cpu")
    d = sampling_defaults(pipe)
    result = {"steps": d.num_inference_steps, "guidance": d.guidance_scale, "device": "cpu",
              "threads": torch.get_num_threads()}
    result["seconds_per_image_batch1"] = seconds_per_image(pipe, d, 2 if args.quick else 5)
    print(f"seconds per image (batch 1, {d.num_inference_steps} steps): {result['seconds_per_image_batch1']:.3f}")
    result["prompt_following"] = prompt_following(pipe, d, 1 if args.quick else 3)
    print("prompt following:", result["prompt_following"])
    result["attention"] = attention_readability(pipe, d, 12 if args.quick else 60)
    print("attention readability:", result["attention"])
    result["autoencoder"] = autoencoder(pipe, 100 if args.quick else 1000)
    print("autoencoder (clean scenes):", result["autoencoder"])
    result["fixed_seed_baseline"] = fixed_seed_baseline(pipe, d, 12 if args.quick else 60)
    print("fixed-seed baseline:", result["fixed_seed_baseline"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
