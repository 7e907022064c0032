"""The shapes world: a procedural GenEval, the project's embedded default task.

`world` draws scenes and prompts, `detector` reads images back into detections, and
`rewards.geneval_rules` judges detections against a prompt's metadata.
"""

from collections.abc import Mapping

import numpy as np

from rewards.geneval_rules import ImageScore, score_detections
from rewards.shapes.detector import Detections, detect
from rewards.shapes.world import (
    COLORS,
    IMAGE_SIZE,
    SHAPES,
    Scene,
    ShapeObject,
    all_records,
    mislabeled_caption,
    noisy_caption,
    render,
    sample_scene,
    underspecified_caption,
)

__all__ = [
    "COLORS", "IMAGE_SIZE", "INVALID_PREFIX", "SHAPES", "Detections", "ImageScore", "Scene", "ShapeObject", "all_records",
    "detect", "mislabeled_caption", "noisy_caption", "render", "sample_scene", "score_image", "underspecified_caption",
]


INVALID_PREFIX = "invalid image"


def score_image(image: np.ndarray, metadata: Mapping) -> ImageScore:
    """GenEval verdicts for one image; an unreadable image (clutter, noise, malformed blobs) scores
    0 on every verdict whatever it contains, so adding junk can never pay."""
    found = detect(image)
    if not found.valid:
        return ImageScore(0.0, 0.0, 0.0, f"{INVALID_PREFIX}: {found.reason}")
    return score_detections(found.objects, metadata)
