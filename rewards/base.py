"""The scorer contract and the registry that builds scorers by name.

A scorer maps a batch (images uint8 [B, H, W, 3], prompts, per-image metadata) to a `ScoreResult`:
the training reward [B] plus named per-image diagnostics (GenEval's strict/partial, OCR's read text
length, ...). Scorers are registered by name; `build_scorer("ocr", **options)` imports the module of a
built-in scorer on first use, so that asking for OCR never imports transformers.

Unscored images. A failure is not a reward: an image the scorer could not score (its request raised or
timed out, a remote judge's answer was malformed) is *unscored*, never 0. The representation, one for the
whole data path: `ScoreResult.scored` [B] bool is False there and `reward` is NaN there, so code that
ignores the mask still cannot read a failure as a number. `ScoreResult.valid` (scored and finite) is what
the advantage stage and the metrics read; `errors` keeps a few one-line reasons for the run's stop message.

Declared inputs. A scorer gets (images, prompts, metadata) and, only where its class declares it, more
(`call_scorer` is the one place that reads the declarations, `scorer_inputs`):
- `groupwise = True`: keyword `groups`, int [B], the reward group of each image (the images normalised together;
  a request holds whole groups, rewards/pool.py), so it can score an image against the others of its group
  (pairwise win rates, rewards/pairwise.py). It still returns one reward per image.
- `wants_progress = True`: keyword `progress`, a `Progress` (the iteration that sampled the images, out of the
  run's `iterations`), or None outside training (evaluation).
- `wants_latents = True`: keyword `latents`, the final latents [B, ...] the images were decoded from (a torch
  tensor in the policy's dtype), or None where the caller has none (evaluation). Latents are large: a rollout
  actor puts them in the object store only when some configured scorer declares this.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

# Built-in scorers: name -> module that registers it. Modules import their heavy dependencies
# (transformers, onnxruntime) inside the scorer's constructor, so importing one here is cheap.
BUILTIN_SCORERS: dict[str, str] = {
    "ocr": "rewards.ocr",
    "geneval": "rewards.geneval",
    "pickscore": "rewards.pickscore",
    "clipscore": "rewards.pickscore",
    "shapes_geneval": "rewards.shapes_scorer",
    "shapes_quality": "rewards.quality",
    "remote": "rewards.remote",
    "openai_judge": "rewards.openai_judge",
    "vlm_judge": "rewards.vlm_judge",
    "soft_tifa": "rewards.soft_tifa",
    "pairwise_pickscore": "rewards.pairwise",
    "hpsv3": "rewards.hpsv3",
    "unified_reward": "rewards.unified_reward",
    "unified_reward_pairwise": "rewards.unified_reward",
}
# Every image scorer over a video's sampled frames, averaged (rewards/video.py): `video_<name>`.
BUILTIN_SCORERS |= {f"video_{name}": "rewards.video" for name in BUILTIN_SCORERS}
MAX_ERRORS = 5  # one-line failure reasons a ScoreResult keeps: enough to name the cause, small on the wire

_REGISTRY: dict[str, Callable[..., Scorer]] = {}


class ScorerInputError(ValueError):
    """A batch that no scorer can read (wrong dtype, shape, lengths, missing prompt target), or a request a
    remote service refuses as such: the caller's bug, which would fail every retry alike, so it stops the
    run instead of leaving the images unscored."""


@dataclass(frozen=True)
class ScoreResult:
    """Per-image scores of one batch.

    reward: float64 [B], the training reward; NaN wherever `scored` is False.
    diagnostics: name -> float64 [B], logged per reward model (e.g. GenEval `strict`, `partial`).
    scored: bool [B], False for the images the scorer could not score (None: every image scored).
    errors: up to MAX_ERRORS one-line reasons for the unscored images.
    """

    reward: np.ndarray
    diagnostics: Mapping[str, np.ndarray] = field(default_factory=dict)
    scored: np.ndarray | None = None
    errors: tuple[str, ...] = ()

    def __post_init__(self):
        reward = np.asarray(self.reward, dtype=np.float64)
        if reward.ndim != 1:
            raise ValueError(f"ScoreResult.reward must be 1-D [B], got shape {reward.shape}")
        scored = np.ones(reward.shape, dtype=bool) if self.scored is None else np.asarray(self.scored)
        if scored.dtype != bool or scored.shape != reward.shape:
            raise ValueError(f"ScoreResult.scored must be bool {reward.shape}, got {scored.dtype} {scored.shape}")
        diagnostics = {}
        for name, values in self.diagnostics.items():
            values = np.asarray(values, dtype=np.float64)
            if values.shape != reward.shape:
                raise ValueError(f"ScoreResult diagnostic {name!r} has shape {values.shape}, reward {reward.shape}")
            diagnostics[name] = values
        # The mask is authoritative: whatever number sits under an unscored image is not a reward.
        object.__setattr__(self, "reward", np.where(scored, reward, np.nan))
        object.__setattr__(self, "scored", scored)
        object.__setattr__(self, "diagnostics", diagnostics)
        object.__setattr__(self, "errors", tuple(self.errors)[:MAX_ERRORS])

    def __len__(self) -> int:
        return len(self.reward)

    @property
    def valid(self) -> np.ndarray:
        """bool [B]: scored and finite, the images whose reward may be trained on."""
        return self.scored & np.isfinite(self.reward)

    @staticmethod
    def unscored(size: int, error: str) -> ScoreResult:
        """`size` images that could not be scored, for the one-line reason `error`."""
        return ScoreResult(np.full(size, np.nan), scored=np.zeros(size, dtype=bool), errors=(error,))

    @staticmethod
    def concat(parts: Sequence[ScoreResult]) -> ScoreResult:
        """Join the results of consecutive sub-batches into one. A diagnostic that a part lacks (an
        unscored part has none) is NaN for that part's images."""
        if not parts:
            raise ValueError("ScoreResult.concat needs at least one part")
        names = list(dict.fromkeys(n for p in parts for n in p.diagnostics))
        return ScoreResult(
            np.concatenate([p.reward for p in parts]),
            {n: np.concatenate([p.diagnostics.get(n, np.full(len(p), np.nan)) for p in parts]) for n in names},
            np.concatenate([p.scored for p in parts]),
            tuple(e for p in parts for e in p.errors),
        )


class Scorer(Protocol):
    """What every registered scorer implements (plus, where it declares them, the keywords of `SCORER_INPUTS`)."""

    name: str

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping]) -> ScoreResult: ...


@dataclass(frozen=True)
class Progress:
    """Where training stands when a group is sampled: for scorers that declare `wants_progress` (a reward
    whose weight or threshold follows a curriculum)."""

    iteration: int  # the iteration that sampled the images, 0-based
    iterations: int  # the run's `iterations`

    def __post_init__(self):
        if not 0 <= self.iteration < self.iterations:
            raise ValueError(f"Progress: iteration {self.iteration} outside [0, iterations={self.iterations})")

    @property
    def fraction(self) -> float:
        """iteration / iterations, in [0, 1)."""
        return self.iteration / self.iterations


# Class attribute -> the keyword a scorer that sets it True receives (module docstring).
SCORER_INPUTS = {"groupwise": "groups", "wants_progress": "progress", "wants_latents": "latents"}


def scorer_inputs(scorer) -> dict[str, bool]:
    """The inputs a scorer (instance or class) declares, by attribute name: all False for a plain scorer."""
    return {flag: bool(getattr(scorer, flag, False)) for flag in SCORER_INPUTS}


def prompt_groups(prompts: Sequence[str]) -> np.ndarray:
    """int [B]: one group per run of consecutive images with the same prompt, numbered in order. The groups of
    a caller that gives none (an evaluation: the seeds of one prompt, side by side; `python -m rewards serve`);
    runs, not distinct prompts, so a prompt listed twice in a test set makes two groups, not a split one."""
    prompts = list(prompts)
    changes = [i > 0 and prompts[i] != prompts[i - 1] for i in range(len(prompts))]
    return np.cumsum(changes, dtype=np.int64)


def validate_groups(groups, size: int) -> np.ndarray:
    """Check group ids (one integer per image, each group's images consecutive, as every strategy lays them
    out); return them as int64 [B]. Consecutive rows are what lets a request carry whole groups as a slice."""
    groups = np.asarray(groups)
    if groups.shape != (size,) or not np.issubdtype(groups.dtype, np.integer):
        raise ScorerInputError(f"groups must be integers [B={size}], got {groups.dtype} {groups.shape}")
    starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    if len(starts) != len(np.unique(groups)):
        raise ScorerInputError(f"each group's images must be consecutive; got groups {groups.tolist()}")
    return groups.astype(np.int64)


def call_scorer(scorer: Scorer, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None,
                *, groups=None, progress: Progress | None = None, latents=None) -> ScoreResult:
    """Score one batch, handing the scorer the extra inputs it declares and nothing else: `groups` (None: one
    group per run of the same prompt), `progress`, `latents` (rows of the batch). The reward worker and the in-process
    scoring of benchmarks both call this."""
    declared = scorer_inputs(scorer)
    extras = {}
    if declared["groupwise"]:  # None: one group per run of the same prompt (`prompt_groups`)
        extras["groups"] = validate_groups(prompt_groups(prompts) if groups is None else groups, len(prompts))
    if declared["wants_progress"]:
        extras["progress"] = progress
    if declared["wants_latents"]:
        if latents is not None and len(latents) != len(prompts):
            raise ScorerInputError(f"{len(prompts)} images but {len(latents)} latents")
        extras["latents"] = latents
    return scorer(images, prompts, metadata, **extras)


def register_scorer(name: str) -> Callable[[Callable[..., Scorer]], Callable[..., Scorer]]:
    """Class decorator: make a scorer buildable by `build_scorer(name, **options)`."""

    def decorate(factory: Callable[..., Scorer]) -> Callable[..., Scorer]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"scorer {name!r} is already registered by {_REGISTRY[name]!r}")
        _REGISTRY[name] = factory
        return factory

    return decorate


def known_scorers() -> list[str]:
    """Names `build_scorer` accepts: the built-ins and anything registered in this process."""
    return sorted(set(BUILTIN_SCORERS) | set(_REGISTRY))


def scorer_factory(name: str) -> Callable[..., Scorer]:
    """The registered factory (usually the class) for `name`, importing a built-in's module if needed."""
    if name not in _REGISTRY and name in BUILTIN_SCORERS:
        importlib.import_module(BUILTIN_SCORERS[name])
    if name not in _REGISTRY:
        raise KeyError(f"unknown scorer {name!r}; known scorers: {', '.join(known_scorers())}")
    return _REGISTRY[name]


def check_scorer_options(name: str, options: Mapping) -> None:
    """Raise TypeError naming the scorer and the key if `options` does not fit its constructor (an unknown
    key, or a required one missing)."""
    signature = inspect.signature(scorer_factory(name))
    accepted = [n for n, p in signature.parameters.items() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [n for n in accepted if signature.parameters[n].default is inspect.Parameter.empty]
    missing = [n for n in required if n not in options]
    if missing:  # at config load, not when the reward actors start
        raise TypeError(f"scorer {name!r} needs option(s) {missing}")
    if any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values()):
        return
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"scorer {name!r} has no option(s) {unknown}; it accepts {accepted}")


def build_scorer(name: str, **options) -> Scorer:
    """Instantiate the scorer registered as `name` with its keyword options."""
    check_scorer_options(name, options)
    return scorer_factory(name)(**options)


def build_scorers(scorers) -> dict[str, Scorer]:
    """Every configured scorer (rewards.scorers) built in this process, by name: for evaluation and the
    benchmarks that run without Ray (the trainer scores through reward actors, rewards/pool.py)."""
    return {s.name: build_scorer(s.name, **s.scorer_options()) for s in scorers}


def validate_batch(
    images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None
) -> list[Mapping]:
    """Check a scorer's inputs; return the metadata list ({} per image when None).

    Concise errors, no silent correction (diffusers' rule): a float image or CHW layout is a bug in
    the caller, not something to guess around.
    """
    if not isinstance(images, np.ndarray):
        raise ScorerInputError(f"images must be a numpy uint8 array [B, H, W, 3], got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise ScorerInputError(f"images must be uint8 in [0, 255], got dtype {images.dtype}")
    if images.ndim != 4:
        raise ScorerInputError(f"images must be [B, H, W, 3], got shape {images.shape}")
    if images.shape[-1] != 3:
        raise ScorerInputError(f"images must have 3 channels last (RGB, [B, H, W, 3]), got shape {images.shape}")
    if images.shape[0] == 0:
        raise ScorerInputError("empty batch: images has B = 0")
    if images.shape[1] == 0 or images.shape[2] == 0:
        raise ScorerInputError(f"images have an empty spatial size: {images.shape}")
    if len(prompts) != images.shape[0]:
        raise ScorerInputError(f"{images.shape[0]} images but {len(prompts)} prompts")
    return validate_metadata(prompts, metadata)


def validate_metadata(prompts: Sequence[str], metadata: Sequence[Mapping] | None) -> list[Mapping]:
    """Check prompts (one string per image) and metadata (one dict per prompt, or None: {} each);
    return the metadata list. For callers that hand on images by reference, unseen."""
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ScorerInputError("prompts must be a list of strings, one per image")
    if metadata is None:
        return [{} for _ in prompts]
    metadata = list(metadata)
    if len(metadata) != len(prompts):
        raise ScorerInputError(f"{len(prompts)} images but {len(metadata)} metadata records")
    if not all(isinstance(m, Mapping) for m in metadata):
        raise ScorerInputError("metadata must be a list of dicts, one per image")
    return metadata
