"""`soft_tifa`: GenEval 2's Soft-TIFA (Kamath et al. 2025, arXiv 2512.16853) as a reward: the prompt is split
into atomic yes/no questions (objects, counts, colours, relations; rewards/questions.py), a vision-language
judge answers each about the image (rewards/vlm_judge.py, P(yes) from its token probabilities), and

    reward  = mean over the prompt's questions of P(yes)           (soft: partial credit per atom)
    correct = 1 if every question's P(yes) > 0.5, else 0           (the prompt-level verdict)

`correct` carries GenEval's verdict name because it is the verdict the evaluation's accuracy is read from
(cluster/evaluation.py), as for the `geneval` scorer. TIFA (Hu et al. 2023) counted the answers a VQA model
got right; Soft-TIFA keeps the probabilities, which matters to RL: a group of images that all fail one atom
still gets distinct rewards.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rewards.base import ScoreResult, ScorerInputError, register_scorer, validate_batch
from rewards.questions import UnparsedPrompt, questions_for
from rewards.vlm_judge import JUDGE_MODEL, VLMJudge

QUESTION_TEMPLATE = "{question} Answer yes or no."


def soft_tifa(p_yes: Sequence[float]) -> tuple[float, float]:
    """(mean P(yes), all-yes verdict 1.0/0.0) over one prompt's questions."""
    p = np.asarray(p_yes, dtype=np.float64)
    if p.size == 0:
        raise ValueError("soft_tifa needs at least one question's P(yes)")
    return float(p.mean()), float(np.all(p > 0.5))


@register_scorer("soft_tifa")
class SoftTifaScorer:
    """reward: mean P(yes) over the prompt's atomic questions; diagnostics: correct (every P(yes) > 0.5),
    min_p_yes (the weakest atom), questions (how many were asked)."""

    name = "soft_tifa"

    def __init__(self, model: str = JUDGE_MODEL, processor: str | None = None, require_questions: bool = False,
                 question_template: str = QUESTION_TEMPLATE, batch_size: int = 8, cache_size: int = 4096,
                 min_pixels: int | None = None, max_pixels: int | None = None, device: str = "auto",
                 dtype: str = "bfloat16", num_threads: int = 1):
        """model, processor, batch_size, cache_size, min_pixels, max_pixels, dtype: the judge's (vlm_judge);
        require_questions: every prompt record must carry its `questions` (written by `python -m rewards
        questions`); False decomposes a record without them at scoring time (rule-based, GenEval templates only);
        question_template: how each question is put to the judge ({question} filled in)."""
        try:
            filled = question_template.format(question="\0")
        except (KeyError, IndexError, ValueError):
            filled = ""
        if "\0" not in filled:
            raise ValueError(f"soft_tifa: question_template must contain {{question}} and no other field, got "
                             f"{question_template!r}")
        self.require_questions, self.template = require_questions, question_template
        self.judge = VLMJudge(model, processor, answer="yes_no", batch_size=batch_size, cache_size=cache_size,
                              min_pixels=min_pixels, max_pixels=max_pixels, device=device, dtype=dtype,
                              num_threads=num_threads, scorer=self.name)

    def questions(self, prompt: str, record: Mapping) -> list[str]:
        if self.require_questions and not record.get("questions"):
            raise ScorerInputError(f"soft_tifa: prompt {prompt!r} has no `questions` in its prompt record, and "
                                   "require_questions is set (write them with `python -m rewards questions`)")
        try:
            return questions_for({**record, "prompt": prompt})
        except UnparsedPrompt as err:
            raise ScorerInputError(f"soft_tifa: {err}; give the record a `questions` list "
                                   "(`python -m rewards questions` writes them for GenEval-template prompts)") from None

    def __call__(self, images: np.ndarray, prompts: Sequence[str],
                 metadata: Sequence[Mapping] | None = None) -> ScoreResult:
        metadata = validate_batch(images, prompts, metadata)
        asked = [self.questions(p, m) for p, m in zip(prompts, metadata, strict=True)]
        pairs = [(image, self.template.format(question=q)) for image, qs in zip(images, asked, strict=True) for q in qs]
        answers = self.judge([image for image, _ in pairs], [q for _, q in pairs])
        bounds = np.cumsum([0] + [len(qs) for qs in asked])
        per_image = [answers[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]
        reward, correct = zip(*(soft_tifa(p) for p in per_image), strict=True)
        return ScoreResult(np.array(reward), {"correct": np.array(correct),
                                              "min_p_yes": np.array([p.min() for p in per_image]),
                                              "questions": np.array([len(qs) for qs in asked], dtype=np.float64)})
