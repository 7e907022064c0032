"""OCR reward (Flow-GRPO's text-rendering task): PP-OCR through rapidocr on onnxruntime.

rapidocr_onnxruntime ships PaddleOCR's PP-OCR detection and recognition models in its wheel, so this
runs offline, on CPU or (with onnxruntime-gpu) GPU. The rule is Flow-GRPO's (`flow_grpo/ocr.py`,
`OcrScorer.__call__`), written as pure functions below.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import numpy as np

from rewards.base import ScoreResult, ScorerInputError, register_scorer, validate_batch

_QUOTED = re.compile(r'"([^"]*)"')


def ocr_target(prompt: str) -> str:
    """The first double-quoted span of the prompt: the text the image must show."""
    match = _QUOTED.search(prompt)
    if match is None or not match.group(1).strip():
        raise ScorerInputError(f'ocr: prompt has no double-quoted target text: {prompt!r}')
    return match.group(1)


def _normalize(text: str) -> str:
    return text.replace(" ", "").lower()


def ocr_reward(read: str, target: str) -> float:
    """Flow-GRPO's OCR reward: 1 if the target is a substring of the read text, else
    1 - min(levenshtein(read, target), len(target)) / len(target), both strings lower-cased and
    stripped of spaces. The cap means reading many unrelated characters costs no more than reading
    none (upstream comment: "only add one character penalty")."""
    from Levenshtein import distance

    read, target = _normalize(read), _normalize(target)
    if not target:
        raise ScorerInputError("ocr: the target text is empty after removing spaces")
    if target in read:
        return 1.0
    return 1.0 - min(distance(read, target), len(target)) / len(target)


@register_scorer("ocr")
class OcrScorer:
    """rapidocr (PP-OCR det + rec, no angle classifier, like Flow-GRPO's `use_angle_cls=False`)."""

    name = "ocr"

    def __init__(self, num_threads: int = 1, min_confidence: float = 0.0):
        """num_threads: onnxruntime intra-op threads (Ray actors default to 1 thread).
        min_confidence: drop recognised lines at or below this confidence (upstream keeps > 0)."""
        from rapidocr_onnxruntime import RapidOCR

        self.min_confidence = min_confidence
        threads = max(1, int(num_threads))
        self._engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)

    def intra_op_threads(self) -> list[int]:
        """The intra-op thread count each onnxruntime session (detection, recognition) was created with."""
        sessions = (self._engine.text_det.infer, self._engine.text_rec.session)  # rapidocr's OrtInferSession
        return [s.session.get_session_options().intra_op_num_threads for s in sessions]

    def read(self, image: np.ndarray) -> str:
        """All recognised lines of one uint8 [H, W, 3] RGB image, concatenated in detection order."""
        # rapidocr treats 3-channel ndarrays as BGR (cv2 convention); flip so colours are what it expects.
        lines, _ = self._engine(np.ascontiguousarray(image[..., ::-1]), use_cls=False)
        return "".join(text for _, text, confidence in (lines or []) if float(confidence) > self.min_confidence)

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None) -> ScoreResult:
        validate_batch(images, prompts, metadata)
        targets = [ocr_target(p) for p in prompts]
        read = [self.read(image) for image in images]
        reward = np.array([ocr_reward(r, t) for r, t in zip(read, targets, strict=True)])
        exact = np.array([float(_normalize(r) == _normalize(t)) for r, t in zip(read, targets, strict=True)])
        read_chars = np.array([len(_normalize(r)) for r in read], dtype=np.float64)
        return ScoreResult(reward, {"exact": exact, "read_chars": read_chars})
