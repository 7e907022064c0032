"""HTTP calls of the remote scorers (rewards/remote.py, rewards/openai_judge.py): bounded retries with
exponential backoff, per-call timeouts and a bounded number of requests in flight.

What a failure becomes:
- timeouts, refused or dropped connections, HTTP 408/429/5xx and answers that are not the expected JSON
  are retried, `retries` times at most, then `Unanswered`: the caller leaves those images unscored;
- any other 4xx (a wrong model name, an image the service refuses, a bad token) would fail every retry
  alike: ScorerInputError at once, which stops the run with the service's message.
A retry resends the same body, request id included, so a service that caches by id (rewards/serve.py)
scores a request once however often its answer is lost.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from rewards.base import ScorerInputError

T = TypeVar("T")
RETRY_STATUS = frozenset({408, 425, 429})  # plus every 5xx
MAX_BACKOFF_S = 30.0


class Unanswered(RuntimeError):
    """No usable answer after every try; the message says why (the last failure)."""


@dataclass(frozen=True)
class RetryPolicy:
    """timeout_s per HTTP call; retries after the first try; backoff_s, doubled after each try (with jitter)."""

    timeout_s: float = 60.0
    retries: int = 2
    backoff_s: float = 0.5

    def __post_init__(self):
        if self.timeout_s <= 0 or self.retries < 0 or self.backoff_s < 0:
            raise ValueError(f"timeout_s must be > 0, retries and backoff_s >= 0; got {self}")

    def delay(self, attempt: int) -> float:
        """Seconds before try `attempt + 1`: backoff_s 2^attempt, capped, times a jitter in [0.5, 1] so that
        clients that failed together do not retry together."""
        return min(MAX_BACKOFF_S, self.backoff_s * 2**attempt) * random.uniform(0.5, 1.0)


def read_token(path: str | None, what: str) -> str | None:
    """The bearer token in file `path` (stripped), None without a path; a clear error when it is empty."""
    if path is None:
        return None
    token = Path(path).expanduser().read_text().strip()
    if not token:
        raise ValueError(f"{what}: token file {path} is empty")
    return token


def _snippet(text: str, limit: int = 300) -> str:
    return " ".join(text.split())[:limit]


class JsonClient:
    """POST JSON to one service with retries; `map` runs calls concurrently, at most `max_in_flight` at
    once (the backpressure: a bigger batch waits for a free slot, it never opens more connections)."""

    def __init__(self, url: str, *, policy: RetryPolicy, max_in_flight: int, token: str | None = None,
                 name: str = "remote scorer"):
        import httpx

        if max_in_flight < 1:
            raise ValueError(f"{name}: max_in_flight must be >= 1, got {max_in_flight}")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"{name}: url must start with http:// or https://, got {url!r}")
        self.url, self.policy, self.name = url, policy, name
        self.headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
        self._httpx = httpx
        self._client = httpx.Client(timeout=policy.timeout_s,
                                    limits=httpx.Limits(max_connections=max_in_flight,
                                                        max_keepalive_connections=max_in_flight))
        self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix=f"{name}-http")
        self._lock = threading.Lock()
        self.attempts = 0  # HTTP calls made (tries and retries), for tests and logs

    def post(self, path: str, body: Mapping, parse: Callable[[object], T]) -> T:
        """POST `body` to url + path and return parse(answer JSON); retried as the module says. `parse`
        raises ValueError, KeyError, TypeError or IndexError on an answer it cannot read (retried), and
        ScorerInputError on one that a retry cannot change."""
        try:
            content = json.dumps(body, allow_nan=False).encode()
        except (TypeError, ValueError) as err:  # metadata that JSON cannot carry: the caller's data
            raise ScorerInputError(f"{self.name}: the request does not encode as JSON: {err}") from None
        reason = "no try"
        for attempt in range(self.policy.retries + 1):
            if attempt:
                time.sleep(self.policy.delay(attempt - 1))
            with self._lock:
                self.attempts += 1
            answered, value = self._try(path, content, parse)
            if answered:
                return value
            reason = value
        raise Unanswered(f"{self.name} {self.url}{path}: {reason} (after {self.policy.retries + 1} tries)")

    def _try(self, path: str, content: bytes, parse: Callable[[object], T]) -> tuple[bool, T | str]:
        """One call: (True, parsed answer), or (False, why it is worth retrying); raises ScorerInputError on
        a refusal."""
        httpx = self._httpx
        try:
            answer = self._client.post(self.url + path, content=content, headers=self.headers)
        except httpx.TimeoutException:
            return False, f"timed out after {self.policy.timeout_s:g} s"
        except httpx.TransportError as err:
            return False, f"connection failed: {type(err).__name__}: {err}"
        if answer.status_code in RETRY_STATUS or answer.status_code >= 500:
            return False, f"HTTP {answer.status_code}: {_snippet(answer.text)}"
        if answer.status_code >= 400:
            raise ScorerInputError(f"{self.name} {self.url}{path} refused the request: HTTP {answer.status_code}: "
                                   f"{_snippet(answer.text)}")
        try:
            return True, parse(answer.json())
        except ScorerInputError:  # `parse` found an answer that every retry would repeat (a misrouted URL)
            raise
        except (ValueError, KeyError, TypeError, IndexError) as err:  # json.JSONDecodeError is a ValueError
            return False, f"malformed answer ({type(err).__name__}: {err}): {_snippet(answer.text, 120)}"

    def map(self, fn: Callable[..., T], items: Sequence) -> list[T]:
        """[fn(item) for item in items], at most max_in_flight at once, in order; the first exception raised
        (a refusal) propagates."""
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
