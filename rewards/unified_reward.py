"""UnifiedReward (Wang et al. 2025, arXiv 2503.05236) as in-process judges: Qwen2.5-VL fine-tunes
(CodeGoat24/UnifiedReward-qwen-{3b,7b,32b}, the 2.0 series CodeGoat24/UnifiedReward-2.0-qwen-*) trained to grade
generated images, pointwise (a 1-5 score) and pairwise (which of two images is better).

Both read the answer from token probabilities at one position (rewards/vlm_judge.py), never from generated text:
- `unified_reward`: the 2.0 series' pointwise image format, whose answer starts "Alignment Score (1-5): X": the
  text before the digit is forced (`answer_prefix`) and the reward is the expected digit 1..5 under the softmax
  over the digit tokens, mapped to [0, 1] (vlm_judge's `answer: score`). The models write decimals
  ("2.69"), so the digit read is the integer part: the reward is E[floor(score)], rescaled.
- `unified_reward_pairwise`: both images in one message, asked which is better; the answer "Image 1 is better"
  / "Image 2 is better" is forced up to where the two part, and P(image 1 better) is the two-way softmax of the
  "1" and "2" logits there. The judge reads the pair in order (`symmetric = False`), so the pairwise machinery
  (rewards/pairwise.py) asks both orders and averages, and the reward is Pref-GRPO's win rate within the group.

The default templates are our wording of the requests in UnifiedReward's published inference code (the 2.0
pointwise image scoring request; the Qwen models' pairwise image ranking request), keeping the parts the
answers depend on: the axes, the output format lines and the "Text Caption: [...]" ending. A fine-tuned judge
can be sensitive to the exact wording: pass their text as `template` to reproduce their setting exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rewards.base import ScoreResult, register_scorer, validate_batch
from rewards.pairwise import PairwiseScorer, Preferences
from rewards.vlm_judge import VLMJudge, fill_template

UNIFIED_REWARD_MODEL = "CodeGoat24/UnifiedReward-2.0-qwen-7b"
SCORE_MAX = 5  # UnifiedReward grades on 1..5
POINT_TEMPLATE = (
    "You are shown an image generated from a text caption. Assess the image against the caption along three "
    "axes, each rated from 1 to 5:\n"
    "- Alignment Score: how well the content of the image matches the caption.\n"
    "- Coherence Score: how logically consistent the image is (no visual glitches or distorted objects).\n"
    "- Style Score: how aesthetically appealing the image is, whatever the caption says.\n\n"
    "Answer in exactly this format:\n\n"
    "Alignment Score (1-5): X\n"
    "Coherence Score (1-5): Y\n"
    "Style Score (1-5): Z\n\n"
    "The task is as follows:\n"
    "Text Caption: [{prompt}]"
)
# The first line of the answer up to its digit: the reward is the alignment score, the one both UnifiedReward's
# pointwise formats and Pref-GRPO's pointwise baseline read first.
POINT_ANSWER_PREFIX = "Alignment Score (1-5): "
PAIR_TEMPLATE = (
    "You are given a text caption and two images generated from it. Compare the two images on two criteria:\n"
    "1. Alignment with the caption: how accurately each image shows the objects, their attributes and the "
    "relations the caption describes.\n"
    "2. Overall image quality: clarity, detail, colour and aesthetic appeal.\n"
    "Pick the image that matches the caption better while having the better visual quality, and conclude with "
    '"Image 1 is better.", "Image 2 is better." or "Both images are equally good."\n'
    "The task is as follows:\n"
    "Text Caption: [{prompt}]"
)
PAIR_CHOICES = ("Image 1 is better", "Image 2 is better")


def check_template(template: str, scorer: str) -> str:
    """The template, if it names {prompt} (else the judge would be asked about no caption at all)."""
    if not isinstance(template, str) or "{prompt}" not in template:
        raise ValueError(f"{scorer}: template must contain {{prompt}}, where the caption goes; got {template!r}")
    return template


@register_scorer("unified_reward")
class UnifiedRewardScorer:
    """reward: UnifiedReward's expected 1..5 score of the image for its prompt (the alignment score by default),
    mapped to [0, 1]. No diagnostics."""

    name = "unified_reward"

    def __init__(self, model: str = UNIFIED_REWARD_MODEL, processor: str | None = None,
                 template: str = POINT_TEMPLATE, answer_prefix: str = POINT_ANSWER_PREFIX, batch_size: int = 8,
                 cache_size: int = 4096, min_pixels: int | None = None, max_pixels: int | None = None,
                 device: str = "auto", dtype: str = "bfloat16", num_threads: int = 1):
        """model: UnifiedReward (Qwen2.5-VL) folder or hub id; processor: its tokenizer and image processor (None:
        the model's); template: the request, with {prompt} and any metadata field filled in; answer_prefix: the
        answer's text before its digit, forced; batch_size, cache_size, min_pixels, max_pixels, dtype: the
        judge's (vlm_judge)."""
        self.template = check_template(template, self.name)
        self.judge = VLMJudge(model, processor, answer="score", score_max=SCORE_MAX, answer_prefix=answer_prefix,
                              batch_size=batch_size, cache_size=cache_size, min_pixels=min_pixels,
                              max_pixels=max_pixels, device=device, dtype=dtype, num_threads=num_threads,
                              scorer=self.name)

    def __call__(self, images: np.ndarray, prompts: Sequence[str],
                 metadata: Sequence[Mapping] | None = None) -> ScoreResult:
        metadata = validate_batch(images, prompts, metadata)
        questions = [fill_template(self.template, p, m, self.name) for p, m in zip(prompts, metadata, strict=True)]
        return ScoreResult(self.judge(list(images), questions))


class VLMPairJudge:
    """A pairwise judge (rewards/pairwise.py) from a VLMJudge in `choice` mode: both images of a pair in one
    message, first image first; P(first preferred) = P(first choice). Order-sensitive, so `symmetric = False`."""

    symmetric = False

    def __init__(self, judge: VLMJudge, template: str, scorer: str):
        self.judge, self.template, self.scorer = judge, template, scorer

    def prefer(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping],
               pairs: np.ndarray) -> Preferences:
        questions = [fill_template(self.template, prompts[a], metadata[a], self.scorer) for a in pairs[:, 0]]
        return Preferences(self.judge([(images[a], images[b]) for a, b in pairs], questions))


@register_scorer("unified_reward_pairwise")
class UnifiedRewardPairwise(PairwiseScorer):
    """Pref-GRPO's win rate with UnifiedReward's pairwise ranking as the judge, asked in both orders."""

    name = "unified_reward_pairwise"

    def __init__(self, model: str = UNIFIED_REWARD_MODEL, processor: str | None = None,
                 template: str = PAIR_TEMPLATE, choices: Sequence[str] = PAIR_CHOICES, batch_size: int = 8,
                 cache_size: int = 4096, min_pixels: int | None = None, max_pixels: int | None = None,
                 device: str = "auto", dtype: str = "bfloat16", num_threads: int = 1):
        """model, processor: as unified_reward's; template: the request, with {prompt} (and metadata fields);
        choices: the two answers, image 1's first (read where their tokens part); batch_size: pairs per forward
        (two images each); cache_size, min_pixels, max_pixels, dtype: the judge's (vlm_judge)."""
        template = check_template(template, self.name)  # before the weights load: a config error is cheap
        judge = VLMJudge(model, processor, answer="choice", choices=choices, batch_size=batch_size,
                         cache_size=cache_size, min_pixels=min_pixels, max_pixels=max_pixels, device=device,
                         dtype=dtype, num_threads=num_threads, scorer=self.name)
        self.judge = VLMPairJudge(judge, template, self.name)
