"""`shapes_geneval`: the shapes world's programmatic detector judged by GenEval's rules.

The embedded default reward: no model weights, exact on clean renders, 0 for unreadable images
(see rewards/shapes/detector.py for why the detector is strict).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from rewards.base import ScoreResult, ScorerInputError, register_scorer, validate_batch
from rewards.geneval_rules import GENEVAL_TAGS, ImageScore
from rewards.shapes import INVALID_PREFIX


def check_geneval_metadata(scorer: str, prompts: Sequence[str], metadata: Sequence[Mapping]) -> None:
    """Each image needs a GenEval record (`tag`, `include`): the rules read the record, not the prompt."""
    for prompt, record in zip(prompts, metadata, strict=True):
        if "include" not in record or "tag" not in record:
            raise ScorerInputError(f"{scorer}: metadata for prompt {prompt!r} lacks GenEval 'tag'/'include': {dict(record)}")
        if record["tag"] not in GENEVAL_TAGS:
            raise ScorerInputError(f"{scorer}: unknown GenEval tag {record['tag']!r} for prompt {prompt!r}; "
                                   f"known: {', '.join(GENEVAL_TAGS)}")


def verdicts_result(scores: Sequence[ImageScore], reward: str) -> ScoreResult:
    """ScoreResult with reward = the chosen verdict, and every verdict as a diagnostic."""
    table = {name: np.array([getattr(s, name) for s in scores], dtype=np.float64) for name in ("strict", "partial", "correct")}
    return ScoreResult(table[reward], table)


@register_scorer("shapes_geneval")
class ShapesGenevalScorer:
    """reward = Flow-GRPO's partial GenEval reward (default) or the strict verdict; diagnostics:
    strict, partial, correct (GenEval's official verdict) and readable (1 when the strict detector
    read the image as clean shapes: a wrong but readable image failed by choice, an unreadable one by
    rendering)."""

    name = "shapes_geneval"

    def __init__(self, reward: Literal["partial", "strict"] = "partial"):
        if reward not in ("partial", "strict"):
            raise ValueError(f"shapes_geneval: reward must be 'partial' or 'strict', got {reward!r}")
        self.reward = reward

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None) -> ScoreResult:
        from rewards.shapes import score_image

        metadata = validate_batch(images, prompts, metadata)
        check_geneval_metadata(self.name, prompts, metadata)
        scores = [score_image(image, record) for image, record in zip(images, metadata, strict=True)]
        result = verdicts_result(scores, self.reward)
        readable = [0.0 if s.reason.startswith(INVALID_PREFIX) else 1.0 for s in scores]
        return ScoreResult(result.reward, {**result.diagnostics, "readable": np.array(readable)})
