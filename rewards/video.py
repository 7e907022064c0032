"""Video rewards as image rewards over sampled frames: `video_<name>` for every built-in image scorer `<name>`.

A video family's rollouts decode to uint8 videos [B, F, H, W, 3] (models/policy.py `decode`), which travel to the
reward actors as images do (one array per group, by reference). `video_<name>` takes `frames` evenly spaced frames of
each video (the first and the last included), scores the B x frames images with the image scorer `<name>` built with
the remaining options, and averages per video: the reward and every diagnostic of the image scorer. This is how the
video RL trainers score with image models (Pref-GRPO's Wan runs score sampled frames with CLIP and a VLM judge).

A video whose sampled frames are not all scored is unscored (never a partial mean). Two diagnostics watch the motion,
over all frames, and never enter the reward: `temporal_diff`, the mean absolute pixel change between consecutive frames
(in [0, 1]; 0 is a still image), and `temporal_cos`, the mean cosine between consecutive frames' centred pixels (1 for
a still image; a collapse towards 1 with a rising reward says the policy learned to stop moving).

A 4-D batch [B, H, W, 3] is read as one-frame videos, so a video scorer also runs on an image family. The image
scorers themselves stay image scorers: a plain `<name>` given videos refuses them (rewards.base.validate_batch), and
cluster/config.py refuses a video family whose scorers are not video scorers before anything starts.

`video_<name>` is registered for every name in rewards.base.BUILTIN_SCORERS (its entry maps it to this module); its
options are `frames` and the image scorer's own, so `model`, `num_threads` and `device` reach the image scorer as
rewards/config.py passes them.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

import numpy as np

from rewards.base import (
    BUILTIN_SCORERS,
    SCORER_INPUTS,
    ScoreResult,
    ScorerInputError,
    build_scorer,
    register_scorer,
    scorer_factory,
    validate_metadata,
)

PREFIX = "video_"
DEFAULT_FRAMES = 4


def frame_indices(num_frames: int, frames: int) -> np.ndarray:
    """`frames` evenly spaced indices into a video of `num_frames` frames, first and last included (all of them when
    the video is shorter)."""
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    return np.unique(np.linspace(0, num_frames - 1, min(frames, num_frames)).round().astype(np.int64))


def as_videos(images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None) -> tuple[np.ndarray, list]:
    """uint8 [B, F, H, W, 3] (a 4-D image batch as one-frame videos) and the metadata list; ScorerInputError otherwise."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise ScorerInputError(f"videos must be a numpy uint8 array [B, F, H, W, 3], got {getattr(images, 'dtype', type(images))}")
    videos = images[:, None] if images.ndim == 4 else images
    if videos.ndim != 5 or videos.shape[-1] != 3 or 0 in videos.shape:
        raise ScorerInputError(f"videos must be [B, F, H, W, 3] (or images [B, H, W, 3]), got shape {images.shape}")
    if len(prompts) != videos.shape[0]:
        raise ScorerInputError(f"{videos.shape[0]} videos but {len(prompts)} prompts")
    return videos, validate_metadata(prompts, metadata)


def temporal_diagnostics(videos: np.ndarray) -> dict[str, np.ndarray]:
    """Per video [B]: mean |x_{t+1} - x_t| / 255 and the mean cosine of consecutive centred frames (a one-frame video:
    0 and 1, a still image's values)."""
    b, f = videos.shape[:2]
    if f < 2:
        return {"temporal_diff": np.zeros(b), "temporal_cos": np.ones(b)}
    x = videos.reshape(b, f, -1).astype(np.float32) - 127.5
    diff = np.abs(x[:, 1:] - x[:, :-1]).mean(axis=(1, 2)) / 255.0
    norms = np.linalg.norm(x, axis=2)
    cos = (x[:, 1:] * x[:, :-1]).sum(axis=2) / np.maximum(norms[:, 1:] * norms[:, :-1], 1e-6)
    return {"temporal_diff": diff.astype(np.float64), "temporal_cos": cos.mean(axis=1).astype(np.float64)}


class VideoFrameScorer:
    """An image scorer over `frames` evenly spaced frames of each video, averaged per video."""

    accepts_video = True

    def __init__(self, image_scorer: str, frames: int = DEFAULT_FRAMES, **options):
        if frames < 1:
            raise ValueError(f"{PREFIX}{image_scorer}: frames must be >= 1, got {frames}")
        self.name, self.frames = PREFIX + image_scorer, frames
        self.image_scorer = build_scorer(image_scorer, **options)

    def __getattr__(self, attr: str):
        """What the reward actor asks of its scorer beyond the call (rewards/worker.py: `intra_op_threads`) is the
        image scorer's."""
        if attr == "image_scorer":
            raise AttributeError(attr)
        return getattr(self.image_scorer, attr)

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None,
                 **inputs) -> ScoreResult:
        """`inputs`: what the image scorer declares (rewards.base.call_scorer hands them, as the flags are the image
        scorer's): per-video `groups` and `latents` repeated for each sampled frame, `progress` as it is."""
        videos, metadata = as_videos(images, prompts, metadata)
        b, f, h, w, _ = videos.shape
        index = frame_indices(f, self.frames)
        k = len(index)
        flat = np.ascontiguousarray(videos[:, index].reshape(b * k, h, w, 3))
        per_frame = {key: value if key == "progress" or value is None else _repeat(value, k) for key, value in inputs.items()}
        flat_prompts, flat_metadata = [p for p in prompts for _ in range(k)], [m for m in metadata for _ in range(k)]
        order = None
        if per_frame.get("groups") is not None:  # a groupwise image scorer: compare like frames with like
            order, per_frame["groups"] = frame_groups(inputs["groups"], k)
            flat, flat_prompts, flat_metadata = flat[order], [flat_prompts[i] for i in order], [flat_metadata[i] for i in order]
            per_frame = {key: _take(value, order) if key in ("latents",) and value is not None else value
                         for key, value in per_frame.items()}
        result = self.image_scorer(flat, flat_prompts, flat_metadata, **per_frame)
        if len(result) != b * k:
            raise RuntimeError(f"{self.image_scorer.name} returned {len(result)} scores for {b * k} frames")
        if order is not None:
            result = _unpermute(result, order)
        scored = result.scored.reshape(b, k).all(axis=1)  # a video's reward is the mean over all its sampled frames
        with np.errstate(invalid="ignore"):
            reward = result.reward.reshape(b, k).mean(axis=1)
            diagnostics = {name: np.nanmean(v.reshape(b, k), axis=1) if np.isfinite(v).any() else np.full(b, np.nan)
                           for name, v in result.diagnostics.items()}
        return ScoreResult(reward, {**diagnostics, **temporal_diagnostics(videos)}, scored, result.errors)


def frame_groups(groups, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For a groupwise image scorer over k sampled frames of each video (rows video-major: video i's frames at
    i*k .. i*k+k-1): the order of those rows that puts frame j of every video of a group side by side, and the
    group id of each reordered row, one per (group, frame j), consecutive as rewards.base.validate_groups asks.
    So a pairwise judge compares frame j of one video with frame j of the others, never two frames of one video."""
    groups = np.asarray(groups)
    dense = np.cumsum(np.r_[True, groups[1:] != groups[:-1]]) - 1  # the videos' groups are consecutive runs
    video, frame = np.repeat(np.arange(len(groups)), k), np.tile(np.arange(k), len(groups))
    order = np.lexsort((video, frame, dense[video]))
    return order, (dense[video] * k + frame)[order]


def _take(rows, order: np.ndarray):
    """rows[order] for numpy arrays and torch tensors alike."""
    if hasattr(rows, "index_select"):
        import torch

        return rows.index_select(0, torch.as_tensor(order, device=rows.device))
    return np.asarray(rows)[order]


def _unpermute(result: ScoreResult, order: np.ndarray) -> ScoreResult:
    """A ScoreResult of rows scored in `order`, back in the original order."""
    def back(values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values)
        out[order] = values
        return out

    return ScoreResult(back(result.reward), {n: back(v) for n, v in result.diagnostics.items()}, back(result.scored),
                       result.errors)


def _repeat(rows, k: int):
    """Each row k times in a row (numpy arrays and torch tensors alike)."""
    return rows.repeat_interleave(k, dim=0) if hasattr(rows, "repeat_interleave") else np.repeat(np.asarray(rows), k, axis=0)


class _Factory:
    """`video_<image_scorer>`'s factory. Its signature is `frames` and the image scorer's own options (so that
    rewards/config.py checks and fills them as for the image scorer), and it declares the inputs the image scorer
    declares (rewards.base.SCORER_INPUTS); both are read from the image scorer's factory when first asked, so that
    registering every `video_<name>` imports no image scorer's module."""

    accepts_video = True

    def __init__(self, image_scorer: str):
        self.image_scorer = image_scorer
        self.__name__ = self.__qualname__ = PREFIX + image_scorer

    def __call__(self, **options) -> VideoFrameScorer:
        return VideoFrameScorer(self.image_scorer, **options)

    @property
    def __signature__(self) -> inspect.Signature:
        params = list(inspect.signature(scorer_factory(self.image_scorer)).parameters.values())
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params
               if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "frames"]
        frames = inspect.Parameter("frames", inspect.Parameter.KEYWORD_ONLY, default=DEFAULT_FRAMES)
        return inspect.Signature([frames, *own, *(p for p in params if p.kind is p.VAR_KEYWORD)])

    def __getattr__(self, attr: str):
        if attr in SCORER_INPUTS:
            return bool(getattr(scorer_factory(self.image_scorer), attr, False))
        raise AttributeError(attr)


for _name in [n for n in BUILTIN_SCORERS if not n.startswith(PREFIX)]:
    register_scorer(PREFIX + _name)(_Factory(_name))
