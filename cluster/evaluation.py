"""Evaluation: deterministic ODE images (T_eval steps, fixed seeds) on the test prompts, scored by the
configured reward models; shapes-GenEval accuracy per category when the scorer reports GenEval's
`correct` verdict. Writes eval.json and an image grid. Two evaluations of one checkpoint agree exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rewards.base import ScoreResult
from rewards.geneval_rules import accuracy
from rollout.seeding import derive_seed

SampleFn = Callable[[list[str], int, list[int]], np.ndarray]  # (prompts, images per prompt, seed per prompt) -> uint8
ScoreFn = Callable[[np.ndarray, list[str], list[dict]], dict[str, ScoreResult]]

EVAL_SEED = 1234


def summarize(records: Sequence[dict], per_prompt: int, scores: dict[str, ScoreResult]) -> dict:
    """eval.json content: per scorer mean reward (+ diagnostics); GenEval `overall` and one key per tag."""
    tags = [r.get("tag", "all") for r in records for _ in range(per_prompt)]
    out: dict = {"num_prompts": len(records), "images_per_prompt": per_prompt, "rewards": {}}
    for name, result in scores.items():
        entry = {"mean": float(np.nanmean(result.reward))}
        entry.update({d: float(np.nanmean(v)) for d, v in result.diagnostics.items()})
        out["rewards"][name] = entry
        if "correct" in result.diagnostics and "overall" not in out:
            out.update(accuracy(tags, np.nan_to_num(result.diagnostics["correct"]).tolist()))
    return out


def image_grid(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile [N, H, W, 3] images into one [rows*H, columns*W, 3] image (1 px grey gutters)."""
    n, h, w, _ = images.shape
    rows = -(-n // columns)
    grid = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, 3), 128, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        grid[1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + c * (w + 1) : 1 + c * (w + 1) + w] = img
    return grid


def display_scale(image_side: int, target: int = 128, max_scale: int = 4) -> int:
    """Nearest-neighbour upscaling for a grid of `image_side`-pixel images: the shapes world's 32 px
    images are enlarged (x4) to be seen; 128 px and larger are left as they are (512 px x4 would make a
    16k-pixel-wide PNG)."""
    return max(1, min(max_scale, target // image_side))


def save_png(array: np.ndarray, path: Path, image_side: int) -> None:
    """Write a grid of `image_side`-pixel tiles, upscaled only when the tiles are tiny."""
    from PIL import Image

    img = Image.fromarray(array)
    scale = display_scale(image_side)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    img.save(path)


@dataclass
class Evaluation:
    summary: dict  # what eval.json holds
    images: np.ndarray  # uint8 [prompts * images_per_prompt, H, W, 3], prompt-major


def evaluate(
    records: Sequence[dict],
    sample: SampleFn,
    score: ScoreFn,
    *,
    images_per_prompt: int,
    output_dir: str | Path,
    seed: int = EVAL_SEED,
    name: str = "eval",
) -> Evaluation:
    """Sample, score and write `<output_dir>/<name>.json` and `<name>_grid.png`."""
    if not records:
        raise ValueError("evaluate: no prompts")
    prompts = [r["prompt"] for r in records]
    images = sample(prompts, images_per_prompt, [derive_seed(seed, "eval", i) for i in range(len(prompts))])
    expected = len(prompts) * images_per_prompt
    if images.shape[0] != expected:
        raise ValueError(f"evaluate: sampler returned {images.shape[0]} images, expected {expected}")
    rep_prompts = [p for p in prompts for _ in range(images_per_prompt)]
    rep_meta = [dict(r) for r in records for _ in range(images_per_prompt)]
    summary = summarize(records, images_per_prompt, score(images, rep_prompts, rep_meta))
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(summary, indent=2))
    save_png(image_grid(images[: 16 * images_per_prompt], columns=max(images_per_prompt, 8)), out / f"{name}_grid.png",
             image_side=images.shape[1])
    return Evaluation(summary, images)
