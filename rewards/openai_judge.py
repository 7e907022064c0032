"""`openai_judge`: a vision-language model behind an OpenAI-compatible chat-completions endpoint (what
`vllm serve` and SGLang expose) as a reward: one POST {url}/chat/completions per image, the image as a
data:image/png;base64 URL beside a question built from a template.

Two answer kinds:
- `yes_no`: reward = P(yes) = p(yes) / (p(yes) + p(no)) over the first answer token's top_logprobs
  (tokens compared stripped and lower-cased, so "Yes", " yes" and "YES" add up), as VQAScore-style judges
  read a VLM; where the server returns no logprobs, or neither word is among them, the text is read:
  an answer whose first word is yes or no scores 1 or 0.
- `score`: the answer must be one number, nothing else, within score_range; reward = the number mapped
  linearly from score_range to [0, 1].
Anything else is a malformed answer: that image is left unscored, with the answer quoted in the reason,
never read as 0. Failed calls are retried (rewards/http_client.py); the model's answer is not (a
deterministic judge, temperature 0, would say the same again).

The parsing functions are pure, so other judges (rewards/vlm_*.py) can reuse them.
"""

from __future__ import annotations

import base64
import io
import math
import re
import string
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from rewards.base import ScoreResult, ScorerInputError, register_scorer, validate_batch
from rewards.http_client import JsonClient, RetryPolicy, Unanswered, read_token

DEFAULT_TEMPLATE = 'Does this image show "{prompt}"? Answer yes or no.'
NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)")


class MalformedAnswer(ValueError):
    """A well-formed reply whose answer cannot be read as the asked kind (unscored, not retried)."""


def png_data_url(image: np.ndarray) -> str:
    """uint8 [H, W, 3] -> data:image/png;base64,... (lossless, as the judge should see the sample)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def chat_request(served_model: str, question: str, image_url: str, *, max_tokens: int, top_logprobs: int) -> dict:
    """The chat-completions body: one user turn, the image then the question, greedy decoding."""
    body = {"model": served_model, "temperature": 0.0, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": image_url}},
                                                       {"type": "text", "text": question}]}]}
    if top_logprobs > 0:
        body |= {"logprobs": True, "top_logprobs": top_logprobs}
    return body


def reply_parts(answer) -> tuple[str, list | None]:
    """(answer text, top_logprobs of the first non-blank content token or None) of a chat-completions reply;
    KeyError/TypeError/IndexError on a reply without choices[0].message.content (a malformed reply)."""
    choice = answer["choices"][0]
    text = choice["message"]["content"]
    if not isinstance(text, str):
        raise TypeError(f"choices[0].message.content is {type(text).__name__}, not text")
    content = ((choice.get("logprobs") or {}).get("content")) or []
    first = next((t for t in content if isinstance(t, Mapping) and str(t.get("token", "")).strip()), None)
    return text, (first.get("top_logprobs") if first else None)


def _word(text: str) -> str:
    return text.strip().strip(string.punctuation).lower()


def p_yes_from_logprobs(top_logprobs: Sequence[Mapping] | None) -> float | None:
    """p(yes) / (p(yes) + p(no)) from one token's top_logprobs; None when neither word is listed."""
    mass = {"yes": 0.0, "no": 0.0}
    for entry in top_logprobs or []:
        word = _word(str(entry.get("token", "")))
        logprob = entry.get("logprob")
        if word in mass and isinstance(logprob, (int, float)) and math.isfinite(logprob):
            mass[word] += math.exp(logprob)
    total = mass["yes"] + mass["no"]
    return mass["yes"] / total if total > 0 else None


def parse_yes_no(text: str) -> float:
    """1.0 or 0.0 from an answer whose first word is yes or no; MalformedAnswer otherwise."""
    words = text.split()
    first = _word(words[0]) if words else ""
    if first not in ("yes", "no"):
        raise MalformedAnswer(f"not a yes/no answer: {text[:80]!r}")
    return 1.0 if first == "yes" else 0.0


def parse_score(text: str, low: float, high: float) -> float:
    """The answer as one number in [low, high], strictly (no words around it); MalformedAnswer otherwise."""
    stripped = text.strip()
    if not NUMBER.fullmatch(stripped):
        raise MalformedAnswer(f"not a single number: {text[:80]!r}")
    value = float(stripped)
    if not low <= value <= high:
        raise MalformedAnswer(f"score {value:g} outside [{low:g}, {high:g}]")
    return value


@register_scorer("openai_judge")
class OpenAIJudgeScorer:
    """reward: P(yes) (answer='yes_no') or the normalised score (answer='score'); diagnostics: `from_logprobs`
    (1 where P(yes) came from logprobs, 0 from the text) or `raw` (the number the judge gave)."""

    name = "openai_judge"

    def __init__(self, served_model: str, url: str = "http://127.0.0.1:8000/v1", template: str = DEFAULT_TEMPLATE,
                 tag_templates: dict[str, str] | None = None, answer: Literal["yes_no", "score"] = "yes_no",
                 score_range: tuple[float, float] = (1.0, 10.0), max_tokens: int | None = None, top_logprobs: int = 5,
                 api_key_file: str | None = None, timeout_s: float = 60.0, retries: int = 2, backoff_s: float = 0.5,
                 max_in_flight: int = 8):
        """served_model: the model name the server serves (`vllm serve NAME`); url: its /v1 base URL;
        template: the question, with {prompt} and any metadata field (e.g. {tag}) filled in per image;
        tag_templates: per-task questions by the metadata's `tag` (others use `template`); answer and
        score_range: how the answer is read (module docstring); max_tokens: the answer's length (default 1
        for yes_no, 8 for score); top_logprobs: how many alternatives to ask for (0: read the text only);
        api_key_file: a file holding the server's key; timeout_s, retries, backoff_s: per HTTP call;
        max_in_flight: requests at once."""
        if answer not in ("yes_no", "score"):
            raise ValueError(f"openai_judge: answer must be 'yes_no' or 'score', got {answer!r}")
        low, high = (float(v) for v in score_range)
        if not low < high:
            raise ValueError(f"openai_judge: score_range must be (low, high) with low < high, got {score_range}")
        if not served_model:
            raise ValueError("openai_judge: served_model must name the model the server serves")
        self.served_model, self.answer, self.range = served_model, answer, (low, high)
        self.templates = {None: template, **(tag_templates or {})}
        self.max_tokens = max_tokens or (1 if answer == "yes_no" else 8)
        self.top_logprobs = top_logprobs if answer == "yes_no" else 0
        self.client = JsonClient(url.rstrip("/"), policy=RetryPolicy(timeout_s, retries, backoff_s),
                                 max_in_flight=max_in_flight, token=read_token(api_key_file, "openai_judge"),
                                 name="openai_judge")

    def question(self, prompt: str, record: Mapping) -> str:
        template = self.templates.get(record.get("tag"), self.templates[None])
        try:
            return template.format_map({**record, "prompt": prompt})
        except (KeyError, IndexError, ValueError) as err:
            raise ScorerInputError(f"openai_judge: template {template!r} names a field this image's metadata lacks "
                                   f"or is malformed: {err!r}") from None

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None) -> ScoreResult:
        metadata = validate_batch(images, prompts, metadata)
        items = [(image, self.question(p, m)) for image, p, m in zip(images, prompts, metadata, strict=True)]
        answers = self.client.map(self._ask, items)
        reward = np.array([a[0] for a in answers], dtype=np.float64)
        extra = np.array([a[1] for a in answers], dtype=np.float64)
        errors = tuple(a[2] for a in answers if a[2] is not None)
        name = "from_logprobs" if self.answer == "yes_no" else "raw"
        return ScoreResult(reward, {name: extra}, scored=np.isfinite(reward), errors=errors)

    def _ask(self, item: tuple[np.ndarray, str]) -> tuple[float, float, str | None]:
        """(reward, diagnostic, None), or (NaN, NaN, reason) for an image left unscored."""
        image, question = item
        body = chat_request(self.served_model, question, png_data_url(image), max_tokens=self.max_tokens,
                            top_logprobs=self.top_logprobs)
        try:
            text, top = self.client.post("/chat/completions", body, reply_parts)
            return self._read(text, top)
        except (Unanswered, MalformedAnswer) as err:
            return math.nan, math.nan, f"openai_judge: {err}"

    def _read(self, text: str, top: list | None) -> tuple[float, float, None]:
        if self.answer == "score":
            value = parse_score(text, *self.range)
            return (value - self.range[0]) / (self.range[1] - self.range[0]), value, None
        p_yes = p_yes_from_logprobs(top)
        return (p_yes, 1.0, None) if p_yes is not None else (parse_yes_no(text), 0.0, None)
