"""When a forward-process run starts to drift: the distance its optimizer has travelled (the sum over
optimizer steps of the learning rate) at the iteration where its loss leaves its starting level.

    python benchmarks/drift.py outputs/main_job [outputs/other_run ...] [--window 20] [--threshold 7.5]

Reads each run's metrics.jsonl (and config.yaml for runs that logged no `learner/lr`, i.e. before the
schedule existed: their rate was the config's constant) and prints one row per run: iterations, the
summed step size at the end, the loss's `--window`-iteration mean at the start and at the end, the first
iteration whose trailing mean passes `--threshold` (the onset; DiffusionNFT's loss starts at ~6.2 on the
shapes preset) with the summed step size there, and the gradient norm's window means at both ends.
docs/results.md (the main job) reports these numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import yaml


def trailing_means(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of each `window` consecutive values; entry k covers iterations k .. k + window - 1."""
    if len(values) < window:
        return np.array([])
    return np.convolve(values, np.ones(window) / window, mode="valid")


def drift_onset(losses: np.ndarray, step_sizes: np.ndarray, window: int, threshold: float) -> tuple[int, float] | None:
    """(iteration, summed step size there) where the loss's trailing `window` mean first exceeds
    `threshold`, the iteration being the window's last; None when it never does."""
    means = trailing_means(losses, window)
    above = np.flatnonzero(means > threshold)
    if not above.size:
        return None
    at = int(above[0]) + window - 1
    return at, float(np.cumsum(step_sizes)[at])


def run_row(folder: Path, window: int, threshold: float) -> dict:
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{folder}/metrics.jsonl: no iterations")
    constant = yaml.safe_load((folder / "config.yaml").read_text())["learner"]["learning_rate"]
    steps = np.array([r.get("learner/lr", constant) * r.get("learner/optimizer_steps", 0.0) for r in rows])
    loss = np.array([r.get("policy/loss", np.nan) for r in rows], dtype=float)
    grad = np.array([r.get("learner/grad_norm", np.nan) for r in rows], dtype=float)
    means, grads = trailing_means(loss, window), trailing_means(grad, window)
    onset = drift_onset(loss, steps, window, threshold)
    return {"run": str(folder), "iterations": len(rows), "summed_step": float(steps.sum()),
            "loss_start": float(means[0]) if means.size else float("nan"),
            "loss_end": float(means[-1]) if means.size else float("nan"),
            "onset_iteration": None if onset is None else onset[0],
            "summed_step_at_onset": None if onset is None else onset[1],
            "grad_norm_start": float(grads[0]) if grads.size else float("nan"),
            "grad_norm_end": float(grads[-1]) if grads.size else float("nan")}


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--window", type=int, default=20)
    p.add_argument("--threshold", type=float, default=7.5)
    args = p.parse_args(argv)
    rows = [run_row(folder, args.window, args.threshold) for folder in args.runs]
    print("| run | iterations | summed step | loss start -> end | onset iteration | summed step at onset | grad norm start -> end |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        onset = "none" if r["onset_iteration"] is None else str(r["onset_iteration"])
        at = "-" if r["summed_step_at_onset"] is None else f"{r['summed_step_at_onset']:.3f}"
        print(f"| {r['run']} | {r['iterations']} | {r['summed_step']:.3f} | {r['loss_start']:.2f} -> {r['loss_end']:.2f} "
              f"| {onset} | {at} | {r['grad_norm_start']:.2f} -> {r['grad_norm_end']:.2f} |")
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
