"""Can training make the size and colour words respond to re-weighting? (notebook 05, section 6)

On the shipped model, re-weighting "big" or "red" in "a big red circle on a blue background" barely
changes the picture; notebook 05 draws the curves and names the suspect: the text encoder is causal,
so "red" and "circle" carry "big" in their embeddings too, and the model reads the size from them as
much as from the column of "big". This experiment tests that by training against it: the shipped
model is fine-tuned with *word decoys* (``TrainConfig.word_decoys``: for a share of the captions,
each object word after the first is encoded after decoys of the earlier ones, so that only its own
token says its attribute), everything else as the shipped model was trained (the attention loss,
the tail decoys, caption dropout, EMA). Then, side by side for the shipped and the fine-tuned model:

* the re-weighting response of each word (:func:`p2p_lab.p2p.reweight_response`, as notebook 05
  draws it): radius change for "big", object hue for "red", area for "circle", background hue for
  "blue", at c in -2..4, averaged over ``--seeds`` seeds;
* prompt following (``benchmarks/model_quality.py``'s ``prompt_following``: every shape x colour x
  background, ``--quality-seeds`` seeds each);
* Prompt-to-Prompt's colour, shape and background swaps (``benchmarks/p2p_eval.py``, ``--p2p-seeds``
  seeds per kind, ``--measure-steps`` steps).

Training is resumable (checkpoints in ``--out``, outside git); the fine-tuned pipeline is written to
``<out>/export``, never over ``data/``. The last line printed is one JSON object.

    python benchmarks/reweight_finetune.py [--steps 1500] [--threads 1] [--measure-only] [--quick]

Measured (``--threads 2``, defaults otherwise; 1,500 steps 10 min, measuring 7 min): see the README,
"Re-weighting and training".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent
PROBE = "a big red circle on a blue background"
READS = {"big": "radius", "red": "hue", "circle": "area", "blue": "bg_hue"}
SCALES = (-2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0)


def finetune(args) -> Path:
    import torch
    from accelerate import Accelerator

    from p2p_lab.model import SHIPPED_MODEL, ModelConfig, load_pipeline
    from p2p_lab.train import TrainConfig, encode_dataset, export, render_dataset, train_ldm

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig(out=str(out), export=str(out / "export"), steps=args.steps, lr=args.lr, warmup=args.warmup,
                      word_decoys=args.word_decoys, init_from=str(SHIPPED_MODEL), n_scenes=args.n_scenes,
                      checkpoint_every=250, export_every=10 ** 9, threads=args.threads)
    if (out / "export" / "done.json").exists():
        return out / "export"
    shipped = load_pipeline()
    vae, tokenizer = shipped.vae, shipped.tokenizer  # the shipped autoencoder and tokenizer, unchanged
    data_file = out / "scenes.npz"
    if data_file.exists():
        data = dict(np.load(data_file))
    else:
        data = render_dataset(cfg.n_scenes, cfg.seed + 1)  # scenes other than the shipped model's
        np.savez(data_file, **data)
    with torch.no_grad():
        lat = encode_dataset(cfg, vae, data, "cpu")
    t0 = time.time()
    unet, text_encoder = train_ldm(cfg, ModelConfig(), tokenizer, lat, data, vae, Accelerator(cpu=True))
    export(out / "export", vae, unet, text_encoder, tokenizer)
    (out / "export" / "done.json").write_text(json.dumps({"seconds_this_run": time.time() - t0,
                                                          "config": {k: str(v) for k, v in vars(cfg).items()}}))
    return out / "export"


def measure(model: str | None, args) -> dict:
    import model_quality
    import p2p_eval

    from p2p_lab.model import load_pipeline, sampling_defaults
    from p2p_lab.p2p import reweight_response

    pipe = load_pipeline(model)
    t0 = time.time()
    curves = reweight_response(pipe, PROBE, READS, SCALES, seeds=range(args.seeds),
                               num_inference_steps=args.measure_steps)
    quality = model_quality.prompt_following(pipe, sampling_defaults(pipe), args.quality_seeds) if args.quality_seeds else None
    smoke = ["--all-sources"] if args.quick else []  # 3-step pictures are too rough to pass as right sources
    p2p = p2p_eval.main(["--seeds", str(args.p2p_seeds), "--steps", str(args.measure_steps), "--sweep", "0.8", "--context-sweep", "0.5",
                         "--word-sweep", "0.4", "--threads", str(args.threads), *smoke], pipe=pipe)
    return {"reweight": {w: [round(float(v), 2) for v in c] for w, c in curves.items()},
            "prompt_following": quality, "p2p": {k: p2p[k] for k in ("p2p", "fixed_seed", "by_edit")},
            "seconds": round(time.time() - t0)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "runs" / "reweight-finetune"))
    ap.add_argument("--steps", type=int, default=1500, help="fine-tuning steps (batch 64)")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--word-decoys", type=float, default=0.5, help="share of captions with word decoys")
    ap.add_argument("--n-scenes", type=int, default=20_000)
    ap.add_argument("--seeds", type=int, default=6, help="seeds of the re-weighting curves")
    ap.add_argument("--quality-seeds", type=int, default=1, help="seeds per shape x colour x background (0: skip)")
    ap.add_argument("--p2p-seeds", type=int, default=20, help="seeds per kind of swap")
    ap.add_argument("--measure-steps", type=int, default=20, help="sampling steps of the measurements")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--measure-only", action="store_true", help="measure an existing <out>/export")
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 steps on 256 scenes, one seed each")
    args = ap.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.n_scenes, args.seeds, args.quality_seeds, args.p2p_seeds = 4, 2, 256, 1, 0, 1
        args.measure_steps = 3
    import torch

    torch.set_num_threads(args.threads)
    tuned = Path(args.out) / "export" if args.measure_only else finetune(args)
    report = {"probe": PROBE, "scales": SCALES, "reads": READS, "steps": args.steps, "word_decoys": args.word_decoys,
              "models": {"shipped": measure(None, args), "fine-tuned": measure(str(tuned), args)}}
    for name, r in report["models"].items():
        print(f"{name}:")
        for w, c in r["reweight"].items():
            print(f"  '{w}' ({READS[w]}):", "  ".join(f"c={s:g}: {v:+.1f}" for s, v in zip(SCALES, c)))
        print("  prompt following:", r["prompt_following"])
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
