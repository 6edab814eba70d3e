"""How long one update of notebook 05's edit widget takes (source cached), on the shipped model.

Builds ``make_edit_ui`` for the notebook's shape swap, then moves the cross tau slider through
several values (each move re-runs only the target branch; the source's maps and latents come from
the engine's SourceCache) and reports the median seconds per update. Target: <= 2 s on a 2-core
CPU. The last line printed is one JSON object.

    python benchmarks/widget_speed.py [--steps 10] [--updates 6] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=10, help="sampling steps (notebook 05 uses 10)")
    ap.add_argument("--updates", type=int, default=6, help="slider moves to time")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from p2p_lab.model import load_pipeline
    from p2p_lab.widgets.p2p import make_edit_ui

    pipe = load_pipeline(device="cpu")
    start = time.perf_counter()
    ui = make_edit_ui(pipe, "a red circle on a blue background", "a red square on a blue background",
                      num_inference_steps=args.steps)
    first = time.perf_counter() - start
    taus = [0.2, 0.5, 0.7, 0.3, 0.9, 0.6, 0.1, 0.4][: args.updates]
    times, cached = [], []
    for tau in taus:
        ui.cross_tau.value = tau  # what a slider move does: observe -> render
        times.append(ui.last_seconds)
        cached.append(ui.result.from_cache)
        print(f"cross tau={tau:.2f}: {ui.last_seconds:.3f} s (source from cache: {ui.result.from_cache})")
    median = statistics.median(times)
    print(f"first render (source + fixed seed + edit): {first:.2f} s; median update: {median:.3f} s")
    print(json.dumps({"benchmark": "widget_speed", "model": "shipped", "steps": args.steps,
                      "threads": args.threads, "updates": len(times), "median_s": round(median, 4),
                      "min_s": round(min(times), 4), "max_s": round(max(times), 4),
                      "first_render_s": round(first, 3), "all_cached": all(cached),
                      "target_s": 2.0, "meets_target": median <= 2.0,
                      "load_avg_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count(),
                      "machine": platform.machine()}))


if __name__ == "__main__":
    main()
