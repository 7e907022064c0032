"""The reward worker: one scorer behind a request/response interface. A plain class, so tests and
`breakpoint()` run it in-process; rewards/pool.py is the one place that wraps it in `ray.remote`.

The worker never dies of a bad request: any exception inside the scorer becomes an error response
for that request (`input_error` when it was the caller's bad input), and the next request is served as
usual. Answered requests are cached by request id, so a request resubmitted to the same worker (after a
timeout on the caller's side, or an HTTP client's retry: rewards/serve.py) is answered without scoring
twice. Error responses are not cached: a retry of a failed request runs the scorer again.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from common.actor_metrics import describe, report_process
from rewards.base import (
    Progress,
    Scorer,
    ScoreResult,
    ScorerInputError,
    build_scorer,
    call_scorer,
    scorer_inputs,
)

RESPONSE_CACHE_SIZE = 64


@dataclass(frozen=True)
class ScoreResponse:
    """The answer to one request: `result` or `error` (a one-line summary, then the traceback);
    `input_error`: the error was a ScorerInputError (the request itself is wrong, not the scorer)."""

    request_id: str
    scorer: str
    result: ScoreResult | None
    error: str | None
    seconds: float
    pid: int
    input_error: bool = False


class RewardWorker:
    """Builds its scorer once (weights loaded in the actor's process, on its device) and scores requests."""

    def __init__(self, scorer: str, options: Mapping | None = None, factory: Callable[[], Scorer] | None = None,
                 *, name: str | None = None):
        """scorer: registered name (also the label of every response and error); options: its constructor
        keywords; factory: a zero-argument callable returning the scorer instead of the registry (tests);
        name: the actor's name (rewards/pool.py: reward-<scorer>-<i>) for the dashboard and its metrics."""
        self.scorer_name = scorer
        self.name = name or f"reward-{scorer}"
        self._scorer = factory() if factory is not None else build_scorer(scorer, **dict(options or {}))
        self._responses: OrderedDict[str, ScoreResponse] = OrderedDict()
        self.requests_served = 0
        report_process("reward", self.name)

    def __repr__(self) -> str:
        """The Ray dashboard's Repr column and log prefix (common/actor_metrics.py)."""
        return describe(type(self).__name__, "reward", self.name, scorer=self.scorer_name)

    def score(self, request_id: str, images: np.ndarray, prompts: Sequence[str],
              metadata: Sequence[Mapping] | None = None, rows: tuple[int, int] | None = None, *,
              groups: np.ndarray | None = None, progress: Progress | None = None, latents=None) -> ScoreResponse:
        """Score one request; a repeated request id returns the cached response. `rows`: the request's
        slice of `images` and `latents` (a whole group's, fetched here from the object store). `groups`,
        `progress`, `latents`: handed on to a scorer that declares them (rewards/base.py `call_scorer`); the
        pool sends them only to such a scorer."""
        if request_id in self._responses:
            return self._responses[request_id]
        start = time.perf_counter()
        result, error, input_error = None, None, False
        try:
            if rows is not None:
                images = images[rows[0] : rows[1]]
                latents = None if latents is None else latents[rows[0] : rows[1]]
            result = call_scorer(self._scorer, images, list(prompts), metadata, groups=groups, progress=progress,
                                 latents=latents)
            if len(result) != len(prompts):
                raise RuntimeError(f"scorer returned {len(result)} scores for {len(prompts)} images")
        except Exception as err:  # noqa: BLE001 - any scorer failure is reported for this request only
            result, input_error = None, isinstance(err, ScorerInputError)
            error = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        response = ScoreResponse(request_id, self.scorer_name, result, error, time.perf_counter() - start, os.getpid(),
                                 input_error)
        self.requests_served += 1
        if error is None:
            self._responses[request_id] = response
            while len(self._responses) > RESPONSE_CACHE_SIZE:
                self._responses.popitem(last=False)
        return response

    def inputs(self) -> dict[str, bool]:
        """The extra inputs its scorer declares (rewards/base.py `scorer_inputs`): the pool batches a groupwise
        scorer's requests by whole groups and ships progress and latents only where they are declared."""
        return scorer_inputs(self._scorer)

    def threads(self) -> dict[str, int]:
        """The thread pools this actor runs with, sized from its reservation (rewards/config.py passes
        max(1, floor(num_cpus_per_actor)) as the scorer's num_threads): torch's intra-op pool, and the
        onnxruntime sessions' of a scorer that has them (OCR)."""
        import torch

        out = {"torch": torch.get_num_threads()}
        if hasattr(self._scorer, "intra_op_threads"):
            out["onnxruntime"] = min(self._scorer.intra_op_threads())
        return out

    def ping(self) -> int:
        """The worker's pid: proves it is up (and lets tests kill it)."""
        return os.getpid()
