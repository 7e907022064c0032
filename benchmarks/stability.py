"""Seconds per iteration and the training-reward curve of several runs side by side: the forward-process
presets (DiffusionNFT, AWM) against Flow-GRPO, and a learning-rate sweep for their stability region.

    python benchmarks/stability.py [--iterations 15] [--output outputs/stability]
                                   [--run shapes_flowgrpo] [--run shapes_nft:learner.learning_rate=3e-4] ...

A run is `preset[:key=value,key=value]`. Each trains on local Ray for `--iterations` iterations without
evaluation (the training reward is the curve) and no checkpoints. Writes results.json (per-iteration
reward and step time per run) and prints a table: median seconds per iteration (the first iteration,
which warms up, excluded), training reward at the start (mean of the first 3 iterations) and at the end
(mean of the last 3), and the minimum and maximum of the curve. The reward is the preset's training
reward (shapes: the partial GenEval reward), noisy at 64 images per iteration: compare the curves, not
single points.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from cluster.config import REPO_ROOT, load_config  # noqa: E402

DEFAULT_RUNS = [
    "shapes_flowgrpo",
    "shapes_nft", "shapes_nft:learner.learning_rate=1.5e-4", "shapes_nft:learner.learning_rate=3e-4",
    "shapes_awm", "shapes_awm:learner.learning_rate=1.5e-4", "shapes_awm:learner.learning_rate=3e-4",
]  # fmt: skip


def parse_run(spec: str) -> tuple[str, list[str]]:
    """'preset:key=value,key=value' -> (preset, overrides)."""
    preset, _, rest = spec.partition(":")
    return preset, [o for o in rest.split(",") if o]


def summarize(rows: list[dict]) -> dict:
    reward = [r["reward/mean"] for r in rows]
    steps = [r["time/step"] for r in rows[1:]] or [rows[0]["time/step"]]
    return {"seconds_per_iteration": float(np.median(steps)), "reward_start": float(np.mean(reward[:3])),
            "reward_end": float(np.mean(reward[-3:])), "reward_min": min(reward), "reward_max": max(reward),
            "reward": reward, "step_seconds": [r["time/step"] for r in rows]}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", action="append", dest="runs", help="preset[:key=value,...] (repeatable)")
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--output", default="outputs/stability")
    args = p.parse_args(argv)
    import ray

    from cluster.plots import read_metrics
    from cluster.ray_init import cpu_demand, start_local_ray
    from cluster.trainer import Trainer

    out = Path(args.output)
    runs = [parse_run(s) for s in (args.runs or DEFAULT_RUNS)]
    results = []
    for i, (preset, overrides) in enumerate(runs):
        run_dir = out / f"{i:02d}-{preset}"
        cfg = load_config(REPO_ROOT / "configs" / f"{preset}.yaml", [
            f"iterations={args.iterations}", f"logging.output_dir={run_dir}", "logging.tensorboard=false",
            "logging.eval_base=false", "logging.checkpoint_every=0", *overrides,
        ])  # fmt: skip
        start_local_ray(cpu_demand(cfg), log_to_driver=False)
        started = time.perf_counter()
        try:
            with Trainer(cfg) as trainer:
                trainer.train()
        finally:
            ray.shutdown()
        results.append({"preset": preset, "overrides": overrides, "lr": cfg.learner.learning_rate,
                        "wall_seconds": time.perf_counter() - started,
                        **summarize(read_metrics(run_dir / "metrics.jsonl"))})
        r = results[-1]
        print(f"[stability] {preset} {overrides}: {r['seconds_per_iteration']:.2f} s/it, reward "
              f"{r['reward_start']:.3f} -> {r['reward_end']:.3f}", flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print("| run | lr | s / iteration | reward start | reward end | min | max |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['preset']} {' '.join(r['overrides'])} | {r['lr']:g} | {r['seconds_per_iteration']:.2f} | "
              f"{r['reward_start']:.3f} | {r['reward_end']:.3f} | {r['reward_min']:.3f} | {r['reward_max']:.3f} |")
    return results


if __name__ == "__main__":
    main()
