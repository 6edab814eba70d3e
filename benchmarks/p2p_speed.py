"""What Prompt-to-Prompt costs: an edit against plain sampling, a cached re-run against a full edit.

* overhead_ratio: ``edit(pipe, source, target)`` (source + 1 target at the engine's defaults, the
  edits computed with fused attention, the source cache filled) over plain sampling of the same two prompts with
  our own loop and the same steps; target <= 1.10.
* cached_rerun_ratio: the same edit with another tau (0.5 and 0.7 in turn, a slider moved back
  and forth), reusing the source from the cache and the targets' first steps from the last run
  (the engine resumes at the first step whose settings changed), over the full edit; target <= 0.6.
* cached_rerun_from_start_ratio: a re-run whose settings change every step (another reweight
  scale in turn), so only the source branch is saved; for comparison.
The four are timed interleaved (in a rotating order), ``--repeats`` times each; each ratio is the
median of the ratios of neighbouring runs (this machine's speed drifts by 10-20 % within minutes,
and pairs cancel most of it); ``overhead_ratio_spread`` gives the quartiles of the edit/plain pairs. Also
printed: attention-store and source-cache bytes for the shipped model and, from Stable Diffusion
v1's layer list (an SD-v1-topology UNet at 64x64 latents: 512 px), for SD v1 at 512 px.

    python benchmarks/p2p_speed.py [--steps 25] [--repeats 15] [--threads N] [--quick]

The last line printed is one JSON object.
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics
import time

import torch

from p2p_lab.p2p import AttentionStore, SourceCache, attention_layers, edit, fixed_seed

SOURCE = "a red circle on a blue background"
TARGET = "a green circle on a blue background"
SD_STEPS, SD_TOKENS, SD_HEADS = 50, 77, 8
TARGETS = {"overhead_ratio": 1.10, "cached_rerun_ratio": 0.6}  # issue 6: at most these


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def speed(pipe, steps: int, repeats: int, guidance) -> dict:
    kw = dict(num_inference_steps=steps, guidance_scale=guidance)
    plain = lambda: fixed_seed(pipe, SOURCE, TARGET, **kw)  # noqa: E731
    full = lambda: edit(pipe, SOURCE, TARGET, **kw)  # noqa: E731
    scrub_cache = edit(pipe, SOURCE, TARGET, **kw).cache  # also warms up
    taus = itertools.cycle([0.5, 0.7])  # a slider moved back and forth: each re-run changes tau
    scrub = lambda: edit(pipe, SOURCE, TARGET, cross_tau=next(taus), cache=scrub_cache, **kw)  # noqa: E731
    other_cache = edit(pipe, SOURCE, TARGET, **kw).cache
    scales = itertools.cycle([1.5, 2.0])  # a reweight changes every step: targets from step 0
    other = lambda: edit(pipe, SOURCE, TARGET, reweight={"green": next(scales)}, cache=other_cache, **kw)  # noqa: E731
    plain()
    names = ("plain", "edit", "cached", "cached_from_start")
    fns = dict(zip(names, (plain, full, scrub, other)))
    times = {k: [] for k in names}
    for r in range(repeats):  # the order rotates, so no method always runs first
        for name in names[r % 4:] + names[:r % 4]:
            times[name].append(_timed(fns[name]))
    med = {k: statistics.median(v) for k, v in times.items()}
    pairs = lambda a, b: [x / y for x, y in zip(times[a], times[b])]  # noqa: E731
    overhead = pairs("edit", "plain")
    return {"overhead_ratio": round(statistics.median(overhead), 4),
            "cached_rerun_ratio": round(statistics.median(pairs("cached", "edit")), 4),
            "cached_rerun_from_start_ratio": round(statistics.median(pairs("cached_from_start", "edit")), 4),
            "overhead_ratio_spread": [round(q, 4) for q in _quartiles(overhead)],
            "seconds": {k: round(v, 4) for k, v in med.items()}, "cache_bytes": scrub_cache.nbytes}


def _quartiles(xs) -> tuple:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return q[0], q[2]


def store_bytes(layers, n_tokens: int, num_steps: int, res_choice: int) -> dict:
    """Attention-store bytes for one prompt under three store settings."""
    est = AttentionStore.estimate_nbytes
    return {"all_cross_per_step": est(layers, n_tokens, 1, num_steps),
            f"cross_res{res_choice}_per_step": est(layers, n_tokens, 1, num_steps, resolutions=(res_choice,)),
            "all_cross_summed_over_steps": est(layers, n_tokens, 1, num_steps, per_step=False),
            "num_steps": num_steps, "n_tokens": n_tokens}


def sd_v1_bytes() -> dict:
    """SD v1 at 512 px: the layer list of an SD-v1-topology UNet run at 64x64 latents."""
    from p2p_lab.testing import sd_like_pipeline

    layers = attention_layers(sd_like_pipeline(latent_size=16, width=32), (64, 64))
    assert all(l.heads == SD_HEADS for l in layers)
    out = store_bytes(layers, SD_TOKENS, SD_STEPS, 16)
    out["source_cache_record_all"] = SourceCache.estimate_nbytes(layers, SD_TOKENS, SD_STEPS, 16)
    return out


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-sd", action="store_true", help="skip the SD v1 byte count")
    p.add_argument("--quick", action="store_true", help="smoke run: 3 steps, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.repeats = min(args.steps, 3), 1
    return args


def main(argv=None, pipe=None) -> dict:
    from p2p_lab.model import load_pipeline

    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = pipe or load_pipeline(args.model)
    with torch.no_grad():
        result = speed(pipe, args.steps, args.repeats, args.guidance)
    layers = attention_layers(pipe)
    n_tok = pipe.tokenizer.model_max_length
    result["store_bytes"] = {"shipped": store_bytes(layers, n_tok, args.steps, max(l.res for l in layers))}
    if not args.no_sd:
        result["store_bytes"]["sd_v1_512px"] = sd_v1_bytes()
    result["targets"] = TARGETS
    result["meets_targets"] = all(result[k] <= v for k, v in TARGETS.items())
    result["settings"] = {"steps": args.steps, "repeats": args.repeats, "guidance": args.guidance,
                          "device": str(next(pipe.unet.parameters()).device), "threads": torch.get_num_threads()}
    print(f"edit / plain sampling: {result['overhead_ratio']:.3f} (quartiles {result['overhead_ratio_spread']})"
          f"   cached re-run / edit: "
          f"{result['cached_rerun_ratio']:.3f}   medians (s): {result['seconds']}")
    for name, b in result["store_bytes"].items():
        print(f"attention store, one prompt, {name}: " + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in b.items()
                                                                  if isinstance(v, int) and "bytes" not in k and v > 1000))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
