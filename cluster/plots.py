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


def ema_smooth(values: list[float], weight: float = 0.9) -> np.ndarray:
    """Debiased exponential moving average (TensorBoard's smoothing): s_t = w s_{t-1} + (1 - w) x_t,
    divided by 1 - w^t so the first points are not pulled towards 0; NaN points are skipped."""
    out, acc, norm = [], 0.0, 0.0
    for x in values:
        if x is not None and np.isfinite(x):
            acc, norm = weight * acc + (1 - weight) * x, weight * norm + (1 - weight)
        out.append(acc / norm if norm else np.nan)
    return np.asarray(out, dtype=np.float64)


def _evaluations(folder: Path, rows: list[dict], base: dict | None, final: dict | None) -> list[tuple[int, dict]]:
    """(iterations completed, summary) of every test evaluation of a run, base and final included."""
    out = [(0, base)] if base else []
    for path in sorted(folder.glob("eval_iter*.json")):
        out.append((int(path.stem.removeprefix("eval_iter")), json.loads(path.read_text())))
    if final:
        out.append((rows[-1]["iteration"] + 1 if rows else 0, final))
    return [(i, e) for i, e in out if "overall" in e]


def plot_curves(metrics_path: str | Path, out_png: str | Path, *, base: dict | None = None,
                final: dict | None = None, smoothing: float = 0.9) -> Path:
    """The training monitor as one picture, three panels:
    (1) training reward per iteration (raw points faint, EMA bold) and the quality watch (a scorer of
        weight 0, e.g. shapes_quality);
    (2) training reward per tag (EMA);
    (3) accuracy: the probe set (fixed prompts and seeds, sampling policy: paired over time) overall
        and per tag, and every test evaluation's overall with its 95% interval."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = Path(metrics_path).parent
    rows = read_metrics(metrics_path)
    its = np.array([r["iteration"] + 1 for r in rows])
    fig, (ax_r, ax_t, ax_a) = plt.subplots(1, 3, figsize=(16, 4.2), dpi=110)

    def raw_and_smooth(ax, key: str, label: str, color: str) -> None:
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(its, [np.nan if v is None else v for v in values], ".", color=color, alpha=0.25, ms=3)
            ax.plot(its, ema_smooth(values, smoothing), color=color, label=label)

    raw_and_smooth(ax_r, "reward/mean", "train reward", "C0")
    raw_and_smooth(ax_r, "reward/accuracy", "train accuracy", "C1")
    scorers = sorted({k.split("/")[1] for r in rows for k in r if k.count("/") == 2 and k.startswith("reward/")
                      and k.endswith("/mean") and not k.startswith("reward/tag/")})
    for i, name in enumerate(scorers):  # each reward model, the watches (weight 0) among them
        raw_and_smooth(ax_r, f"reward/{name}/mean", name, f"C{2 + i}")
    ax_r.set_title(f"training reward (EMA {smoothing}, raw faint)")

    tags = sorted({k.removeprefix("reward/tag/") for r in rows for k in r if k.startswith("reward/tag/")})
    for i, tag in enumerate(tags):
        ax_t.plot(its, ema_smooth([r.get(f"reward/tag/{tag}") for r in rows], smoothing), color=f"C{i}", label=tag)
    ax_t.set_title("training reward per tag (EMA)")

    probes = sorted((folder / "probes").glob("probe_*.json")) if (folder / "probes").is_dir() else []
    if probes:
        summaries = [json.loads(p.read_text()) for p in probes]
        x = [int(p.stem.removeprefix("probe_")) for p in probes]
        probe_tags = [k for k in summaries[0].get("ci", {}) if k != "overall"]
        for i, tag in enumerate(probe_tags):
            ax_a.plot(x, [s.get(tag, np.nan) for s in summaries], color=f"C{i}", alpha=0.45, lw=1, label=f"probe {tag}")
        ax_a.plot(x, [s.get("overall", np.nan) for s in summaries], color="black", lw=1.5, label="probe overall")
    evals = _evaluations(folder, rows, base, final)
    if evals:
        x = [i for i, _ in evals]
        y = np.array([e["overall"] for _, e in evals])
        ci = np.array([e.get("ci", {}).get("overall", [v, v]) for (_, e), v in zip(evals, y, strict=True)])
        ax_a.errorbar(x, y, yerr=[y - ci[:, 0], ci[:, 1] - y], fmt="o--", color="red", capsize=3,
                      label="test eval overall (95% CI)")
    ax_a.set_title("accuracy")
    for ax in (ax_r, ax_t, ax_a):
        ax.set_xlabel("iteration")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="best", fontsize=7)
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
