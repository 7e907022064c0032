"""Pictures of a run: the reward/accuracy curve from metrics.jsonl and a before/after image grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cluster.evaluation import image_grid, save_png


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def eval_points(rows: list[dict], base_overall: float, final_overall: float,
                x_keys: tuple[str, ...] = ("charts/wall_seconds",)) -> list[tuple[float, ...]]:
    """A run's accuracy curve as (x..., overall) points: the base policy at x = 0, each periodic
    evaluation logged in metrics.jsonl, and the final evaluation at the last iteration's x."""
    points = [(*(0.0 for _ in x_keys), base_overall)]
    points += [(*(r[k] for k in x_keys), r["eval/overall"]) for r in rows if "eval/overall" in r]
    points.append((*(rows[-1][k] for k in x_keys), final_overall))
    return points


def plot_curves(metrics_path: str | Path, out_png: str | Path, *, base: dict | None = None,
                final: dict | None = None) -> Path:
    """Training reward (and GenEval accuracy where scored) per iteration; evaluation points on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    its = [r["iteration"] + 1 for r in rows]
    for key, label in (("reward/mean", "train reward (mean)"), ("reward/accuracy", "train accuracy")):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(its, [np.nan if v is None else v for v in values], label=label)
    evals = [(0, base)] if base else []
    evals += [(r["iteration"] + 1, {k[5:]: v for k, v in r.items() if k.startswith("eval/")}) for r in rows
              if any(k.startswith("eval/") for k in r)]
    if final:
        evals.append((its[-1] if its else 0, final))
    points = [(i, e["overall"]) for i, e in evals if e and "overall" in e]
    if points:
        ax.plot(*zip(*points, strict=True), "o--", color="black", label="eval accuracy (overall)")
    ax.set_xlabel("iteration")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out)
    plt.close(fig)
    return out


def before_after_grid(before: np.ndarray, after: np.ndarray, out_png: str | Path, *, per_prompt: int,
                      max_prompts: int = 12) -> Path:
    """One row per prompt: its base-model images, then its trained-policy images (same seeds)."""
    n = min(max_prompts, len(before) // per_prompt)
    rows = []
    for i in range(n):
        sl = slice(i * per_prompt, (i + 1) * per_prompt)
        rows.extend([*before[sl], *after[sl]])
    out = Path(out_png)
    save_png(image_grid(np.stack(rows), columns=2 * per_prompt), out, image_side=before.shape[1])
    return out
