"""Does every notebook's Stable Diffusion branch fit a Colab T4 (15 GB, fp16), and how long does it take?

No GPU and no SD weights here, so two measured runs of each notebook's SD branch and one stated
assumption:

1. **Work** (tiny SD-v1 stand-in, the notebooks' own step counts): every UNet and VAE call is counted,
   in 512-px image-evaluations (batch x latent area / 64^2), cell by cell. The call pattern does not
   depend on the widths, so these are the counts on real SD v1.
2. **Memory** (full-size stand-in: SD v1's real configs, random weights, ``--dtype`` bfloat16 = fp16's
   2 bytes per value, on the CPU, ``--steps`` sampling steps; ``--dtype float32`` runs far faster on
   a CPU without bfloat16 instructions, and its peaks are halved for the fp16 estimate): each cell's peak resident memory
   (VmHWM, reset before every cell) above the kernel's memory after the set-up cell's imports (the
   model's weights count: they load later), plus what the
   live AttentionStores and SourceCaches hold after the cell, scaled from ``--steps`` to the
   notebook's own steps (they grow with the step count; the rest of the peak does not), the stores
   not halved (they keep float32 maps in any dtype), the caches at most ``CACHE_TOTAL_BYTES``
   together (the engine empties older caches beyond it).
3. **Assumed** T4 speeds (not measured here): T4_UNET_S per 512-px UNet image-evaluation in fp16
   (about 2.5 guided steps per second for SD v1 at 512 px, the figure commonly reported for
   Colab's T4) and T4_VAE_S per 512-px decode; CUDA's own context CUDA_CONTEXT_GB.

Prints one line per notebook and a JSON object as the last line. The full-size folder (2 GB) is
written to ``runs/`` (outside git) on first use. Takes tens of minutes on 2 CPU cores.

    python benchmarks/sd_fullsize.py [--steps 2] [--notebooks 02 04 05 06] [--dtype float32] [--work-only | --memory-only | --ops]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
T4_UNET_S = 0.2  # seconds per 512-px UNet image-evaluation, fp16 (assumption, see above)
T4_VAE_S = 0.15  # seconds per 512-px VAE decode or encode, fp16 (assumption)
CUDA_CONTEXT_GB = 0.5  # CUDA context and kernels (assumption)
T4_GB = 15.0

STARTUP = r'''
import json, os, time
from pathlib import Path
import torch
from IPython import get_ipython

LOG = Path(os.environ["P2P_BENCH_LOG"])
state = {"evals": 0.0, "decodes": 0.0, "t0": 0.0, "cell": 0}

def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

# the model's own latent side (SD v1: 64 for 512 px): a call at that size counts 1 per image, so the
# tiny stand-in's counts are real SD's (its latents are smaller, the call pattern is the same)
SIDE = json.loads((Path(os.environ["P2P_LAB_MODEL"]) / "unet" / "config.json").read_text())["sample_size"]

def _area(x, side=SIDE):
    return x.shape[0] * x.shape[-2] * x.shape[-1] / side ** 2

def _wrap_unet():
    from diffusers import UNet2DConditionModel
    forward = UNet2DConditionModel.forward
    def counted(self, sample, *a, **k):
        state["evals"] += _area(sample)
        return forward(self, sample, *a, **k)
    UNet2DConditionModel.forward = counted

def _wrap_vae():
    from diffusers import AutoencoderKL
    for name, side in (("decode", SIDE), ("encode", SIDE * 8)):  # latents in, or images in
        original = getattr(AutoencoderKL, name)
        def counted(self, x, *a, _orig=original, _side=side, **k):
            state["decodes"] += _area(x, _side)
            return _orig(self, x, *a, **k)
        setattr(AutoencoderKL, name, counted)

def _held(kind):
    """Bytes held by every live AttentionStore or SourceCache (they grow with the step count)."""
    import gc
    from p2p_lab.p2p import AttentionStore, SourceCache
    cls = AttentionStore if kind == "stores" else SourceCache
    return sum(o.nbytes for o in gc.get_objects() if isinstance(o, cls))

def pre(info=None):
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    state.update(evals=0.0, decodes=0.0, t0=time.time())

def post(result=None):
    state["cell"] += 1
    with LOG.open("a") as f:
        f.write(json.dumps({"cell": state["cell"], "seconds": time.time() - state["t0"],
                            "peak": _status("VmHWM"), "rss": _status("VmRSS"),
                            "evals": state["evals"], "decodes": state["decodes"],
                            "stores": _held("stores"), "caches": _held("caches")}) + "\n")

_wrap_unet(); _wrap_vae()
ip = get_ipython()
ip.events.register("pre_run_cell", pre)
ip.events.register("post_run_cell", post)
'''


def run_notebook(name: str, model: Path, env: dict, work: Path) -> list[dict]:
    from p2p_lab.testing import execute_notebook

    ipython = work / f"ipython-{name}"
    (ipython / "profile_default" / "startup").mkdir(parents=True, exist_ok=True)
    (ipython / "profile_default" / "startup" / "00-bench.py").write_text(STARTUP)
    log = ROOT / "runs" / "sd_fullsize_logs" / f"{name}-{model.name}.jsonl"  # kept: one line per cell
    log.parent.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    try:
        execute_notebook(ROOT / "notebooks" / f"{name}.ipynb", cwd=work, timeout=7200,
                         env={"P2P_LAB_MODEL": str(model), "IPYTHONDIR": str(ipython),
                              "P2P_BENCH_LOG": str(log), "MPLBACKEND": "Agg", **env})
        failed = None
    except Exception as err:  # a cell raised, or the kernel died (out of memory): report what ran
        failed = f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:200] if str(err).strip() else ''}"
    cells = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if failed:
        print(f"{name} on {model.name}: stopped after {len(cells)} cells ({failed})", flush=True)
        cells.append({"failed": failed})
    return cells


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2, help="sampling steps of the full-size memory run")
    ap.add_argument("--notebooks", nargs="+", default=["02", "04", "05", "06"])
    ap.add_argument("--folder", default=str(ROOT / "runs" / "sd-v1-fullsize-standin"))
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--work-only", action="store_true", help="count the work (T4 time estimate) only, "
                    "without the full-size memory run")
    ap.add_argument("--ops", action="store_true", help="only the peak memory of notebook 06's null-text "
                    "inversion and four-target edit at full size (measure_ops), not the notebooks")
    ap.add_argument("--memory-only", action="store_true", help="the full-size memory run only, without "
                    "counting the work on the small stand-in (no T4 time estimate)")
    args = ap.parse_args(argv)
    import torch

    from p2p_lab.testing import save_sd_standin

    full = Path(args.folder)
    if not args.work_only and not (full / "model_index.json").exists():
        save_sd_standin(full, size="full", dtype=torch.float16)
    if args.ops:
        report = {"ops": measure_ops(full, args.steps, args.dtype), "memory_run": {"steps": args.steps, "dtype": args.dtype}}
        print(json.dumps(report))
        return report
    names = [p.stem for p in sorted((ROOT / "notebooks").glob("*.ipynb"))
             if p.stem.split("_")[0] in args.notebooks]
    report = {"assumed": {"t4_unet_s": T4_UNET_S, "t4_vae_s": T4_VAE_S, "cuda_context_gb": CUDA_CONTEXT_GB},
              "memory_run": {"steps": args.steps, "dtype": args.dtype}, "notebooks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tiny = save_sd_standin(work / "tiny")
        for name in names:
            start = time.time()
            counts = [] if args.memory_only else [c for c in run_notebook(name, tiny, {}, work) if "failed" not in c]
            steps_full = _full_steps(name)
            if args.work_only:
                evals, decodes = sum(c["evals"] for c in counts), sum(c["decodes"] for c in counts)
                entry = {"unet_image_evals": round(evals, 1), "vae_calls_512px": round(decodes, 1), "steps": steps_full,
                         "t4_minutes_estimate": round((evals * T4_UNET_S + decodes * T4_VAE_S) / 60, 1)}
                report["notebooks"][name] = entry
                print(f"{name}: {entry['unet_image_evals']:g} UNet image-evaluations and {entry['vae_calls_512px']:g} "
                      f"512-px VAE calls at {steps_full} steps -> about {entry['t4_minutes_estimate']:g} min on a T4 "
                      f"(estimate)", flush=True)
                continue
            cells = run_notebook(name, full, {"P2P_LAB_STEPS": str(args.steps), "P2P_LAB_DTYPE": args.dtype}, work)
            failed = cells.pop()["failed"] if cells and "failed" in cells[-1] else None
            base = cells[0]["rss"]  # after the set-up cell's imports, before the model loads (its weights count)
            scale = steps_full / args.steps
            half = 0.5 if args.dtype == "float32" else 1.0  # fp16 holds every value in half the bytes
            peaks = [_fp16_peak(c, base, half, scale) / 2 ** 30 for c in cells]
            evals = sum(c["evals"] for c in counts)
            decodes = sum(c["decodes"] for c in counts)
            worst = max(range(len(peaks)), key=peaks.__getitem__)
            entry = {"unet_image_evals": None if args.memory_only else round(evals, 1),
                     "vae_calls_512px": None if args.memory_only else round(decodes, 1),
                     "t4_minutes_estimate": None if args.memory_only else
                     round((evals * T4_UNET_S + decodes * T4_VAE_S) / 60, 1),
                     "gpu_gb_estimate": round(peaks[worst] + CUDA_CONTEXT_GB, 2), "worst_cell": worst,
                     "stores_gb_at_full_steps": round(max(c["stores"] for c in cells) * scale / 2 ** 30, 2),
                     "caches_gb_at_full_steps": round(max(_caches_at_full_steps(c["caches"], half, scale)
                                                          for c in cells) / 2 ** 30, 2),
                     "peak_gb_measured": round(max(c["peak"] - base for c in cells) / 2 ** 30, 2),
                     "cpu_seconds_fullsize": round(sum(c["seconds"] for c in cells)), "steps": steps_full,
                     "fits_t4": peaks[worst] + CUDA_CONTEXT_GB <= T4_GB, "wall_s": round(time.time() - start),
                     "cells_measured": len(cells), "stopped": failed,
                     "cell_peaks_gb": [round(p, 2) for p in peaks]}
            report["notebooks"][name] = entry
            work_line = "" if args.memory_only else (
                f"{entry['unet_image_evals']:g} UNet image-evaluations at {steps_full} steps -> about "
                f"{entry['t4_minutes_estimate']:g} min on a T4 (estimate); ")
            print(f"{name}: {work_line}peak about {entry['gpu_gb_estimate']:g} GB (code cell {worst}; estimate "
                  f"from the full-size stand-in on the CPU){'; stopped: ' + failed if failed else ''}", flush=True)
    print(json.dumps(report))
    return report


OPS = r"""
import json, sys, time
from pathlib import Path
import numpy as np
import torch
from p2p_lab import p2p
from p2p_lab.model import load_pipeline

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024

folder, steps, dtype = sys.argv[1], int(sys.argv[2]), getattr(torch, sys.argv[3])
start = status("VmRSS")
pipe = load_pipeline(folder, device="cpu", dtype=dtype)
size = p2p.inversion.image_size(pipe)
image = np.random.default_rng(0).random((size, size, 3)).astype(np.float32)
prompt, rows = "a photograph of a cat", ["a photograph of a tiger", "a photograph of a dog",
                                         "a photograph of a fluffy cat", "a photograph of a cat"]
out = {"weights": status("VmRSS") - start}
def measure(name, fn):
    Path("/proc/self/clear_refs").write_text("5")
    t0 = time.time()
    result = fn()
    out[name] = {"peak": status("VmHWM") - start, "seconds": time.time() - t0}
    return result
inv = measure("null_text_inversion", lambda: p2p.invert(pipe, image, prompt, "null-text", num_inference_steps=steps,
                                                        num_inner_steps=1, early_stop=0.0, progress=False))
measure("edit_4_targets", lambda: p2p.edit(pipe, prompt, rows, inversion=inv, progress=False))
print(json.dumps(out))
"""


def measure_ops(full: Path, steps: int, dtype: str) -> dict:
    """Peak memory of the two operations of notebook 06 that no other notebook runs: null-text
    inversion (a backward pass through the UNet at 512 px, one Adam step per timestep: the peak does
    not depend on their number) and an edit of four targets from the inversion (notebook 06's
    re-weighting cell: five rows, ten with guidance). In a fresh process, above its memory after
    imports; scaled as the notebooks' peaks are."""
    import subprocess

    res = subprocess.run([sys.executable, "-c", OPS, str(full), str(steps), dtype], capture_output=True, text=True,
                         check=True)
    raw = json.loads(res.stdout.strip().splitlines()[-1])
    half = 0.5 if dtype == "float32" else 1.0
    return {"weights_gb": round(half * raw["weights"] / 2 ** 30, 2),
            **{k: {"gpu_gb_estimate": round(half * v["peak"] / 2 ** 30 + CUDA_CONTEXT_GB, 2),
                   "cpu_seconds_fullsize": round(v["seconds"])} for k, v in raw.items() if k != "weights"}}


def _fp16_peak(cell: dict, base: int, half: float, scale: float) -> float:
    """A cell's peak in bytes at the notebook's own steps in fp16: what does not grow with the steps
    (halved from float32), the AttentionStores scaled (they keep float32 maps in any dtype), the
    caches scaled up to their budget."""
    rest = cell["peak"] - base - cell["stores"] - cell["caches"]
    return half * rest + cell["stores"] * scale + _caches_at_full_steps(cell["caches"], half, scale)


def _caches_at_full_steps(held: int, half: float, scale: float) -> float:
    """The live SourceCaches' bytes at the notebook's own steps: scaled, but never more than the
    pool of live caches may hold (``p2p_lab.p2p.cache.CACHE_TOTAL_BYTES``: older caches are emptied)."""
    from p2p_lab.p2p.cache import CACHE_TOTAL_BYTES
    return min(half * held * scale, CACHE_TOTAL_BYTES)


def _full_steps(name: str) -> int:
    """The sampling steps the notebook's SD branch asks course_steps for (its largest)."""
    import re

    text = (ROOT / "notebooks" / f"{name}.ipynb").read_text()
    found = [int(a) for a in re.findall(r"course_steps\((\d+) if SD", text)]
    found += [int(a) for a in re.findall(r"course_steps\((\d+)\)", text)]
    return max(found) if found else 1


if __name__ == "__main__":
    main(sys.argv[1:])
