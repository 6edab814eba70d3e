"""``python -m p2p_lab edit SOURCE TARGET [TARGET ...] --out grid.png``: a grid source | targets."""
from __future__ import annotations

import json


def _tau(text: str):
    """'0.8', '0.2,0.8' or a JSON object such as '{"red": 0.5, "default_": 0.8}'."""
    text = text.strip()
    if text.startswith("{"):
        return json.loads(text)
    parts = [float(p) for p in text.split(",")]
    return parts[0] if len(parts) == 1 else tuple(parts)


def _reweight(items):
    out = {}
    for item in items or []:
        word, _, scale = item.partition("=")
        if not scale:
            raise SystemExit(f"--reweight expects WORD=SCALE, got {item!r}")
        out[word] = float(scale)
    return out or None


def save_grid(images, path) -> None:
    """Images (n, H, W, 3) in [0, 1] side by side, one 2-pixel white gap between them, as a PNG."""
    import numpy as np
    from PIL import Image

    n, h, w, _ = images.shape
    grid = np.ones((h, n * w + 2 * (n - 1), 3), np.float32)
    for k, img in enumerate(images):
        grid[:, k * (w + 2): k * (w + 2) + w] = img
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)


def options_of(args):
    """The command line's :class:`~p2p_lab.p2p.options.EditOptions`."""
    from .options import EditOptions

    return EditOptions(mode=args.mode, cross_tau=_tau(args.cross_tau), self_tau=_tau(args.self_tau),
                       reweight=_reweight(args.reweight), local_blend=args.local_blend or None,
                       mapper=args.mapper, seed=args.seed, num_inference_steps=args.steps,
                       guidance_scale=args.guidance)


def run_edit(args) -> int:
    from ..model import load_pipeline
    from . import edit

    pipe = load_pipeline(args.model, device=args.device)
    res = edit(pipe, args.source, args.targets, options=options_of(args))
    save_grid(res.images, args.out)
    print(f"wrote {args.out}: {' | '.join(res.prompts)}")
    return 0


def register(subparsers) -> dict:
    help_text = "Prompt-to-Prompt edit: write a PNG grid of source | targets"
    p = subparsers.add_parser("edit", help=help_text)
    p.add_argument("source")
    p.add_argument("targets", nargs="+")
    p.add_argument("--out", default="edit.png")
    p.add_argument("--mode", choices=["replace", "refine"], default=None)
    p.add_argument("--cross-tau", default="0.8", help="0.8 | 0.2,0.8 | JSON {word: tau, \"default_\": tau}")
    p.add_argument("--self-tau", default="0.4", help="0.4 | 0.0,0.4")
    p.add_argument("--reweight", nargs="*", metavar="WORD=SCALE")
    p.add_argument("--local-blend", nargs="*", metavar="WORD", default=None)
    p.add_argument("--mapper", choices=["copy", "average"], default=None, help="replace edits only (default copy)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--model", default=None, help="pipeline folder or hub id (default: the shipped model)")
    p.add_argument("--device", default=None)
    return {"edit": (help_text, run_edit)}
