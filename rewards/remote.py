"""`remote`: a flowray scorer served over HTTP (`python -m rewards serve`, rewards/serve.py), scored
through the wire format of rewards/transport.py.

A batch is sent in requests of at most `images_per_request` images, `max_in_flight` at once; each request
carries a fresh id that its retries reuse, so the server (which caches answers by id) scores it once
however often an answer is lost. A request that gets no usable answer after its retries leaves its images
unscored, with the reason; the images of the others keep their scores.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from rewards.base import ScoreResult, ScorerInputError, register_scorer, validate_batch
from rewards.http_client import JsonClient, RetryPolicy, Unanswered, read_token
from rewards.transport import encode_images, result_from_json


@register_scorer("remote")
class RemoteScorer:
    """Scores through a flowray reward server; reward and diagnostics are the served scorer's."""

    name = "remote"

    def __init__(self, url: str, token_file: str | None = None, scorer: str | None = None,
                 encoding: Literal["png", "safetensors"] = "safetensors", images_per_request: int = 16,
                 timeout_s: float = 60.0, retries: int = 2, backoff_s: float = 0.5, max_in_flight: int = 4):
        """url: the server's base URL (http://127.0.0.1:8790); token_file: a file holding its bearer token
        (read on the reward actor's node); scorer: the scorer the server must serve (checked on every answer);
        encoding: how images travel (both lossless; safetensors skips PNG compression); timeout_s, retries,
        backoff_s: per HTTP call (rewards/http_client.py); max_in_flight: requests at once."""
        if encoding not in ("png", "safetensors"):
            raise ValueError(f"remote: encoding must be 'png' or 'safetensors', got {encoding!r}")
        if images_per_request < 1:
            raise ValueError(f"remote: images_per_request must be >= 1, got {images_per_request}")
        self.expected, self.encoding, self.per_request = scorer, encoding, images_per_request
        self.client = JsonClient(url.rstrip("/"), policy=RetryPolicy(timeout_s, retries, backoff_s),
                                 max_in_flight=max_in_flight, token=read_token(token_file, "remote"), name="remote")

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None) -> ScoreResult:
        metadata = validate_batch(images, prompts, metadata)
        starts = range(0, len(prompts), self.per_request)
        chunks = [(images[s : s + self.per_request], list(prompts[s : s + self.per_request]),
                   [dict(m) for m in metadata[s : s + self.per_request]]) for s in starts]
        return ScoreResult.concat(self.client.map(self._score_chunk, chunks))

    def _score_chunk(self, chunk: tuple[np.ndarray, list[str], list[dict]]) -> ScoreResult:
        images, prompts, metadata = chunk
        body = {"request_id": uuid.uuid4().hex, "prompts": prompts, "metadata": metadata,
                "images": encode_images(images, self.encoding)}
        try:
            return self.client.post("/score", body, lambda answer: self._read(answer, len(prompts)))
        except Unanswered as err:
            return ScoreResult.unscored(len(prompts), str(err))

    def _read(self, answer, size: int) -> ScoreResult:
        if self.expected is not None and isinstance(answer, Mapping) and answer.get("scorer") != self.expected:
            # A misrouted URL is not a transient failure: every retry would reach the same wrong scorer.
            raise ScorerInputError(f"remote: {self.client.url} serves scorer {answer.get('scorer')!r}, "
                                   f"the config expects {self.expected!r}")
        return result_from_json(answer, size)
