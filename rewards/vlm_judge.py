"""`vlm_judge`: a vision-language model run in-process (transformers) as a reward, read from its token
probabilities rather than from generated text.

The judge sees an image (or several, in one message) and one question in the model's chat format and runs a
single forward pass; the reward is read from the logits of the first answer token (the position after the
generation prompt):
- `yes_no` (VQAScore, Lin et al. 2024): P(yes) = p(yes) / (p(yes) + p(no)), the two-way softmax of the
  yes and no logits, each the logsumexp over the single-token spellings the tokenizer has ("Yes", "yes",
  " yes", ...), as rewards/openai_judge.py adds up its top_logprobs.
- `score`: the expectation of the score over the digit tokens 1..N under their softmax, mapped linearly to
  [0, 1] (a G-Eval-style probability-weighted score: smoother than the argmax digit, so groups of similar
  images still get distinct rewards).
- `choice`: P(first of two answers) = the two-way softmax of the logits of the token where the two answers
  part ("Image 1 is better" / "Image 2 is better": "1" vs "2"), for judges shown several images in one message
  (rewards/unified_reward.py's pairwise judge).

An answer the model writes after some fixed text ("Alignment Score (1-5): 4") is read with that text forced:
the tokens the answers share (`answer_prefix`, or the common start of the two choices) are appended to the
prompt as if the model had generated them, and the answer is read at the position after them. The split is
made on tokens, not characters (`split_answers`), so it holds for tokenizers that write " 4" as one token and
for those that write " " and "4".

The machinery (`VLMJudge`: weights, inputs, batching, a bounded cache of (images, question) answers) is
shared with `soft_tifa` (rewards/soft_tifa.py), which asks several questions per image, and with
`unified_reward` / `unified_reward_pairwise` (rewards/unified_reward.py), which show one or two images.

Inputs are built from the tokenizer and the image processor, not from the model's AutoProcessor: the Qwen
VL processors require a video processor, which requires torchvision (not installable beside the pinned
torch, /work/shared/ENVIRONMENT.md), and a judge needs the image path only. The one step the processor adds,
repeating each image placeholder once per merged patch of its image, is `expand_image_tokens`. Tested on
Qwen2.5-VL (a tiny random one, tests/test_vlm_judge.py); Qwen2-VL and Qwen3-VL use the same placeholder scheme.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from rewards.base import ScoreResult, ScorerInputError, register_scorer, validate_batch
from rewards.pickscore import resolve_device

JUDGE_MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
YES_NO_TEMPLATE = 'Does this image show "{prompt}"? Answer yes or no.'
SCORE_TEMPLATE = ('How well does this image show "{prompt}"? Answer with one digit from 1 (not at all) to '
                  '{score_max} (perfectly).')
YES_WORDS, NO_WORDS = ("yes", "Yes", "YES"), ("no", "No", "NO")
DTYPES = ("bfloat16", "float16", "float32")
ANSWERS = ("yes_no", "score", "choice")


# ----------------------------------------------------------------------------- the math (pure)


def p_yes(logits, yes_ids: Sequence[int], no_ids: Sequence[int]):
    """P(yes) [B] from answer-position logits [B, V]: sigmoid(logsumexp(yes logits) - logsumexp(no logits)),
    which is p(yes) / (p(yes) + p(no)) with every spelling of each word added up. fp32 whatever the model ran in."""
    logits = logits.float()
    return (logits[:, list(yes_ids)].logsumexp(-1) - logits[:, list(no_ids)].logsumexp(-1)).sigmoid()


def score_expectation(logits, score_ids: Sequence[int]):
    """E[score] [B] over the scores 1..N (token ids `score_ids`, in order) under their softmax, mapped from
    [1, N] to [0, 1]."""
    import torch

    probs = logits.float()[:, list(score_ids)].softmax(-1)
    scores = torch.arange(1, len(score_ids) + 1, dtype=probs.dtype, device=probs.device)
    return ((probs * scores).sum(-1) - 1) / (len(score_ids) - 1)


# ----------------------------------------------------------------------------- inputs


def image_digest(image: np.ndarray) -> str:
    """A key for an image's exact pixels (shape included, so a reshaped buffer is another image)."""
    data = np.ascontiguousarray(image).tobytes() + repr(image.shape).encode()
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def fill_template(template: str, prompt: str, record: Mapping, scorer: str) -> str:
    """The question for one image: the template with {prompt} and any metadata field (e.g. {tag}) filled in."""
    try:
        return template.format_map({**record, "prompt": prompt})
    except (KeyError, IndexError, ValueError) as err:
        raise ScorerInputError(f"{scorer}: template {template!r} names a field this image's metadata lacks or is "
                               f"malformed: {err!r}") from None


def expand_image_tokens(text: str, image_token: str, counts: int | Sequence[int]) -> str:
    """The chat text with its k-th image placeholder repeated counts[k] times (one per merged patch of the k-th
    image; an int: one image), as the Qwen VL processors do; the model reads each image's features into exactly
    its run of positions, in order."""
    counts = [counts] if isinstance(counts, int) else list(counts)
    pieces = text.split(image_token)
    if len(pieces) - 1 != len(counts):
        raise ValueError(f"the chat template put {len(pieces) - 1} image placeholders {image_token!r} in the "
                         f"judge's prompt; it must put exactly {len(counts)}, one per image (the model's chat template "
                         'should handle {"type": "image"} content)')
    return pieces[0] + "".join(image_token * n + piece for n, piece in zip(counts, pieces[1:], strict=True))


def split_answers(encoded: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(shared, first): the token ids every answer starts with, and each answer's first token after them. The
    shared tokens are forced into the prompt and the answer is read from the next position, so the first tokens
    must differ pairwise (a ValueError otherwise: one position could not tell the answers apart)."""
    shortest = min(len(e) for e in encoded)
    k = 0
    while k < shortest and all(e[k] == encoded[0][k] for e in encoded):
        k += 1
    first = [e[k] for e in encoded if k < len(e)]
    if len(first) != len(encoded) or len(set(first)) != len(first):
        raise ValueError(f"the answers' tokens {[list(e) for e in encoded]} do not part at one position after a "
                         "shared start")
    return list(encoded[0][:k]), first


def answer_tokens(tokenizer, answers: Sequence[str], option: str, scorer: str) -> tuple[list[int], list[int]]:
    """`split_answers` of the answers as the tokenizer writes them, with an error naming the option that set them."""
    try:
        return split_answers([tokenizer.encode(a, add_special_tokens=False) for a in answers])
    except ValueError as err:
        raise ValueError(f"{scorer}: {option} gives answers {list(answers)} that the tokenizer cannot tell apart at "
                         f"one token: {err}") from None


def left_pad(rows: Sequence[Sequence[int]], pad_id: int):
    """(input_ids, attention_mask) [B, L] of token rows padded on the left, so every row's last position is its
    answer position and one logits_to_keep=1 forward reads them all."""
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def single_token_ids(tokenizer, words: Sequence[str], what: str) -> list[int]:
    """Ids of the spellings of a word that the tokenizer keeps as one token (with and without a leading space);
    a ValueError when there is none, since the answer could then not be read from one position."""
    ids = []
    for word in words:
        for spelling in (word, " " + word):
            pieces = tokenizer.encode(spelling, add_special_tokens=False)
            if len(pieces) == 1 and pieces[0] not in ids:
                ids.append(pieces[0])
    if not ids:
        raise ValueError(f"the judge's tokenizer splits every spelling of {what} {list(words)} into several tokens, "
                         "so its probability cannot be read from the first answer token")
    return ids


class JudgeCache:
    """A bounded least-recently-used map (image digests, question) -> answer value, with hit and miss counts.
    Pairs repeat when a request is scored again on the same actor (a resubmission, a `python -m rewards serve`
    client's retry), when identical images come back (a collapsed group) or a record repeats a question; a
    lookup costs one hash of the pixels, a judge forward billions of FLOPs."""

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"cache_size must be >= 0, got {size}")
        self.size, self.hits, self.misses = size, 0, 0
        self._values: OrderedDict[tuple[str, str], float] = OrderedDict()

    def get(self, key: tuple[str, str]) -> float | None:
        value = self._values.get(key)
        if value is None:
            self.misses += 1
            return None
        self.hits += 1
        self._values.move_to_end(key)
        return value

    def put(self, key: tuple[str, str], value: float) -> None:
        if self.size == 0:
            return
        self._values[key] = value
        self._values.move_to_end(key)
        while len(self._values) > self.size:
            self._values.popitem(last=False)

    def __len__(self) -> int:
        return len(self._values)


# ----------------------------------------------------------------------------- the judge


class VLMJudge:
    """A vision-language model in eval mode on one device that answers (images, question) rows with one number
    each: P(yes) (answer='yes_no'), the normalised expected score (answer='score') or P(first choice)
    (answer='choice'), batched and cached. A row shows one image or several in one message, in order."""

    def __init__(self, model: str, processor: str | None = None, *,
                 answer: Literal["yes_no", "score", "choice"] = "yes_no", score_max: int = 9, answer_prefix: str = "",
                 choices: Sequence[str] | None = None, batch_size: int = 8, cache_size: int = 4096,
                 min_pixels: int | None = None, max_pixels: int | None = None, device: str = "auto",
                 dtype: str = "bfloat16", num_threads: int = 1, scorer: str = "vlm_judge"):
        import torch
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        if answer not in ANSWERS:
            raise ValueError(f"{scorer}: answer must be one of {list(ANSWERS)}, got {answer!r}")
        if not 2 <= score_max <= 9:  # each score must be one digit token: "10" is two tokens in most vocabularies
            raise ValueError(f"{scorer}: score_max must be in 2..9 (one digit token per score), got {score_max}")
        if answer == "yes_no" and answer_prefix:  # the yes/no spellings are read at the first answer position
            raise ValueError(f"{scorer}: answer_prefix is read only with answer 'score' or 'choice', got "
                             f"{answer_prefix!r} with answer 'yes_no'")
        if answer == "choice" and (isinstance(choices, str) or choices is None or len(choices) != 2
                                   or not all(isinstance(c, str) and c for c in choices) or choices[0] == choices[1]):
            raise ValueError(f"{scorer}: choices must be two different non-empty answers, got {choices!r}")
        if batch_size < 1 or cache_size < 0:
            raise ValueError(f"{scorer}: batch_size must be >= 1 and cache_size >= 0, got {batch_size}, {cache_size}")
        if dtype not in DTYPES:
            raise ValueError(f"{scorer}: dtype must be one of {list(DTYPES)}, got {dtype!r}")
        torch.set_num_threads(max(1, int(num_threads)))
        self.answer, self.batch_size = answer, batch_size
        self.device, self.dtype = resolve_device(device), getattr(torch, dtype)
        source = processor or model
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        if not self.tokenizer.chat_template or self.tokenizer.pad_token_id is None:
            raise ValueError(f"{scorer}: the tokenizer of {source!r} needs a chat template (the judge asks its question "
                             "in the model's chat format: use an instruction-tuned checkpoint) and a pad token")
        pixels = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
        self.image_processor = AutoImageProcessor.from_pretrained(source, **pixels)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=self.dtype).eval().to(self.device)
        self.image_token = self.tokenizer.convert_ids_to_tokens(self.model.config.image_token_id)
        self.merge = int(getattr(self.image_processor, "merge_size", 1))
        self.prefix_ids: list[int] = []  # answer tokens forced before the read position (module docstring)
        if answer == "yes_no":
            self.yes_ids = single_token_ids(self.tokenizer, YES_WORDS, "yes")
            self.no_ids = single_token_ids(self.tokenizer, NO_WORDS, "no")
        elif answer == "score":
            self.prefix_ids, self.score_ids = answer_tokens(
                self.tokenizer, [answer_prefix + str(k) for k in range(1, score_max + 1)], "answer_prefix", scorer)
        else:
            self.prefix_ids, self.choice_ids = answer_tokens(
                self.tokenizer, [answer_prefix + c for c in choices], "choices", scorer)
        self.cache = JudgeCache(cache_size)

    def __call__(self, images: Sequence, questions: Sequence[str]) -> np.ndarray:
        """float64 [N]: the answer value of each row; images[i] is an image [H, W, 3] or a sequence of images shown
        together (in order). Repeated (images, question) rows are judged once."""
        rows = [(im,) if isinstance(im, np.ndarray) else tuple(im) for im in images]
        keys = [("+".join(image_digest(im) for im in row), q) for row, q in zip(rows, questions, strict=True)]
        values = np.full(len(keys), np.nan)
        todo: dict[tuple[str, str], list[int]] = {}
        for i, key in enumerate(keys):
            cached = self.cache.get(key) if key not in todo else None
            if cached is None:
                todo.setdefault(key, []).append(i)
            else:
                values[i] = cached
        pending = list(todo.items())
        for start in range(0, len(pending), self.batch_size):
            chunk = pending[start:start + self.batch_size]
            answers = self._forward([rows[idx[0]] for _, idx in chunk], [key[1] for key, _ in chunk])
            for (key, idx), value in zip(chunk, answers, strict=True):
                self.cache.put(key, float(value))
                values[idx] = value
        return values

    def inputs(self, rows: Sequence[Sequence[np.ndarray]], questions: Sequence[str]) -> dict:
        """The model's inputs (CPU tensors) for rows of images with their questions: each row's chat text with
        one placeholder run per image, the forced answer tokens appended, left-padded."""
        from PIL import Image

        flat = [im for row in rows for im in row]
        pixels = self.image_processor(images=[Image.fromarray(im) for im in flat], return_tensors="pt")
        counts = (pixels["image_grid_thw"].prod(-1) // self.merge**2).tolist()
        ends = np.cumsum([len(row) for row in rows]).tolist()
        texts = [expand_image_tokens(self._chat(q, len(row)), self.image_token, counts[end - len(row):end])
                 for row, q, end in zip(rows, questions, ends, strict=True)]
        ids, mask = left_pad([t + self.prefix_ids for t in self.tokenizer(texts)["input_ids"]],
                             self.tokenizer.pad_token_id)
        return {"input_ids": ids, "attention_mask": mask, **pixels}

    def _forward(self, rows: Sequence[Sequence[np.ndarray]], questions: Sequence[str]) -> np.ndarray:
        import torch

        inputs = {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                  for k, v in self.inputs(rows, questions).items()}
        with torch.no_grad():
            logits = self.model(**inputs, logits_to_keep=1).logits[:, -1]
        if self.answer == "yes_no":
            return p_yes(logits, self.yes_ids, self.no_ids).double().cpu().numpy()
        if self.answer == "score":
            return score_expectation(logits, self.score_ids).double().cpu().numpy()
        # P(first choice): the two-way softmax of the two choices' tokens, p_yes's formula with one spelling each
        return p_yes(logits, self.choice_ids[:1], self.choice_ids[1:]).double().cpu().numpy()

    def _chat(self, question: str, images: int = 1) -> str:
        messages = [{"role": "user", "content": [{"type": "image"}] * images + [{"type": "text", "text": question}]}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


@register_scorer("vlm_judge")
class VLMJudgeScorer:
    """reward: P(yes) (answer='yes_no') or the normalised expected score (answer='score') of one question per
    image, asked of a vision-language model on this actor's device. No diagnostics."""

    name = "vlm_judge"

    def __init__(self, model: str = JUDGE_MODEL, processor: str | None = None, template: str | None = None,
                 tag_templates: dict[str, str] | None = None, answer: Literal["yes_no", "score"] = "yes_no",
                 score_max: int = 9, batch_size: int = 8, cache_size: int = 4096, min_pixels: int | None = None,
                 max_pixels: int | None = None, device: str = "auto", dtype: str = "bfloat16", num_threads: int = 1):
        """model: image-text-to-text folder or hub id (Qwen2.5-VL by default); processor: folder or hub id of its
        tokenizer and image processor (None: the model's); template: the question, with {prompt} and any metadata
        field filled in (default: a yes/no question, or a 1..score_max rating for answer='score'); tag_templates:
        per-task questions by the metadata's `tag`; answer, score_max: how the answer is read (module docstring);
        batch_size: (image, question) pairs per forward; cache_size: answers kept for repeated pairs (0: none);
        min_pixels, max_pixels: the image processor's resize bounds (None: the checkpoint's); dtype: bfloat16,
        float16 or float32."""
        if answer not in ("yes_no", "score"):  # 'choice' needs its two answers, which this scorer does not take
            raise ValueError(f"vlm_judge: answer must be 'yes_no' or 'score', got {answer!r}")
        self.judge = VLMJudge(model, processor, answer=answer, score_max=score_max, batch_size=batch_size,
                              cache_size=cache_size, min_pixels=min_pixels, max_pixels=max_pixels, device=device,
                              dtype=dtype, num_threads=num_threads, scorer=self.name)
        default = YES_NO_TEMPLATE if answer == "yes_no" else SCORE_TEMPLATE.replace("{score_max}", str(score_max))
        self.templates = {None: template or default, **(tag_templates or {})}

    def __call__(self, images: np.ndarray, prompts: Sequence[str],
                 metadata: Sequence[Mapping] | None = None) -> ScoreResult:
        metadata = validate_batch(images, prompts, metadata)
        questions = [fill_template(self.templates.get(m.get("tag"), self.templates[None]), p, m, self.name)
                     for p, m in zip(prompts, metadata, strict=True)]
        return ScoreResult(self.judge(list(images), questions))
