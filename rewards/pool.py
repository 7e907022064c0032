"""Reward actors on Ray: one pool of actors per scorer, asynchronous submit/gather.

This is the one place where `ray.remote` wraps `RewardWorker`. The driver submits each group's
images as soon as they are sampled (`submit` returns a handle at once) and gathers later:

    pools = RewardPools(config.rewards)
    handle = pools.submit(images, prompts, metadata)      # non-blocking, one request per batch per scorer
    batch = pools.gather(handle)                          # RewardBatch: per-scorer results + combination

Guarantees:
- Actors are named `reward-<scorer>-<i>` and restart (Ray's max_restarts) when they die; they start with the
  driver's Hugging Face settings (common/runtime_env.py), so a scorer finds the cache the driver uses.
- A request lost to an actor death is resubmitted exactly once, under the same request id, to the
  same actor handle, after that actor answers a ping again (a call made while Ray is still restarting
  it fails at once with ActorUnavailableError; such a call is not a second loss and is retried once the
  actor is back). Results are stored by request id and each id is accepted once, so no score is ever
  counted twice.
- Failures are not rewards (rewards/base.py): a request whose scorer raised, or that ran past `timeout_s`
  from the moment its actor could start it (its predecessors on that actor done), comes back with its
  images *unscored* (`ScoreResult.scored` False, reward NaN) and counted by kind; a timed-out request's
  hung actor is killed so Ray restarts it. The run decides what share of unscored images it accepts
  (rewards/unscored.py). Bad input (ScorerInputError: the caller's bug) still raises RewardRequestError.
- NaN/inf scores that a scorer returned as scores: 'mask' marks those images unscored (kind `nonfinite`);
  'fail' raises NonFiniteRewardError naming the scorer and prompts.
- A groupwise scorer (rewards/base.py: it declares `groupwise`) gets whole groups: its requests are cut at
  group boundaries (whole groups up to batch_size_per_request images; a larger group goes whole, alone), each
  with its group ids. Progress and latents go only to the scorers that declare them.
Images travel through Ray's object store only, never through a socket of our own: `submit` puts an
array it is given, or passes on the ObjectRef of images a rollout actor already put
(common/data_plane.py), so that the caller never holds the images.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from common.actor_calls import ActorNotBackError, call_when_available
from common.runtime_env import actor_env
from rewards.base import (
    Progress,
    Scorer,
    ScoreResult,
    prompt_groups,
    validate_batch,
    validate_groups,
    validate_metadata,
)
from rewards.combine import CombinedRewards, combine
from rewards.config import RewardsConfig, ScorerConfig
from rewards.worker import RewardWorker, ScoreResponse

_ACTOR_LOST = (RayActorError, ActorDiedError, ActorUnavailableError)
_MAX_UNAVAILABLE = 20  # refusals of one request by a restarting actor before we call it lost
LATENCY_BOUNDARIES_S = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0]


class RewardError(RuntimeError):
    """Base of the pool's errors; `scorer` names the reward model."""

    def __init__(self, scorer: str, message: str):
        super().__init__(f"reward scorer {scorer!r}: {message}")
        self.scorer = scorer


class RewardRequestError(RewardError):
    """A request's input was refused (ScorerInputError); the actor is still serving."""


class RewardActorError(RewardError):
    """An actor died twice under one request, or could not start."""


class NonFiniteRewardError(RewardError):
    """nan_policy='fail' and a score was NaN or inf."""


class _Metrics:
    """ray.util.metrics of the reward service, tagged by scorer (dashboard/Prometheus: ray_flowray_reward_*)."""

    def __init__(self):
        from ray.util.metrics import Counter, Gauge, Histogram

        tags = ("scorer",)
        self.latency = Histogram("flowray_reward_latency_s", "Seconds per reward request, dispatch to result.",
                                 boundaries=LATENCY_BOUNDARIES_S, tag_keys=tags)
        self.queue_depth = Gauge("flowray_reward_queue_depth", "Reward requests in flight per scorer.", tag_keys=tags)
        self.failures = Counter("flowray_reward_failures", "Failed reward requests (by kind).", tag_keys=("scorer", "kind"))
        self.images = Counter("flowray_reward_images_scored", "Images scored per scorer.", tag_keys=tags)
        self.nonfinite = Counter("flowray_reward_nonfinite", "NaN/inf scores masked or failed on.", tag_keys=tags)
        self.unscored = Counter("flowray_reward_unscored", "Images left unscored (by kind: error, timeout, nonfinite, "
                                "reported by the scorer).", tag_keys=("scorer", "kind"))


@dataclass
class _Request:
    request_id: str
    images: ray.ObjectRef
    prompts: list[str]
    metadata: list[Mapping]
    actor: int
    rows: tuple[int, int] | None = None  # the request's rows of `images` when it holds a whole batch
    ref: ray.ObjectRef | None = None
    attempts: int = 0
    submitted_at: float = 0.0
    started_at: float | None = None  # when its actor could start it (head of that actor's queue)
    unavailable: int = 0  # calls refused while the actor was restarting
    failed: bool = False  # answered as unscored by the pool (the scorer raised, or the request timed out)
    groups: np.ndarray | None = None  # group id per image: for a groupwise scorer only
    progress: Progress | None = None  # for a scorer that declares wants_progress only
    latents: ray.ObjectRef | None = None  # for a scorer that declares wants_latents only (rows as `images`)


def request_rows(size: int, step: int, groups: np.ndarray | None = None) -> list[tuple[int, int]]:
    """[start, stop) of each request: `step` images each, or, given group ids (a groupwise scorer), whole
    consecutive groups packed up to `step` images, a group larger than `step` alone. Never a group split
    across two requests: a win rate against half a group is another number."""
    if groups is None:
        return [(start, min(start + step, size)) for start in range(0, size, step)]
    bounds = [*np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]]).tolist(), size]  # group starts, then the end
    out: list[tuple[int, int]] = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if out and stop - out[-1][0] <= step:
            out[-1] = (out[-1][0], stop)
        else:
            out.append((start, stop))
    return out


@dataclass
class RewardHandle:
    """What `ScorerPool.submit` returns; pass it to `gather`."""

    scorer: str
    size: int
    requests: list[_Request]
    prompts: list[str]


class ScorerPool:
    """`actors` reward actors for one scorer, each with its own CPU/GPU reservation."""

    def __init__(self, config: ScorerConfig, nan_policy: str = "mask", factory: Callable[[], Scorer] | None = None,
                 startup_timeout_s: float = 600.0):
        """factory: optional zero-argument callable building the scorer inside each actor, instead of
        the registry (tests use it for scorers that hang or return NaN)."""
        if not ray.is_initialized():
            raise RuntimeError("ScorerPool needs a running Ray: call ray.init(...) first")
        self.config = config
        self.scorer = config.name
        self.nan_policy = nan_policy
        self.metrics = _Metrics()
        self.unscored_total: dict[str, int] = {}  # kind -> images left unscored
        self.resubmitted_total = 0
        self.duplicates_ignored = 0
        self._queues: list[deque[tuple[_Request, ray.ObjectRef]]] = []
        self._done: dict[str, ScoreResponse] = {}
        remote_worker = ray.remote(RewardWorker)
        options = config.scorer_options() if factory is None else {}
        threads = max(1, int(config.num_cpus_per_actor))  # as the scorer's own pools (rewards/config.py)
        self.actors = []
        for i in range(config.actors):
            self.actors.append(remote_worker.options(
                name=f"reward-{self.scorer}-{i}",
                num_cpus=config.num_cpus_per_actor,
                num_gpus=config.num_gpus_per_actor,
                max_restarts=config.max_restarts,
                max_task_retries=0,  # the pool resubmits itself, once, so it knows what was lost
                runtime_env=actor_env(threads),
            ).remote(self.scorer, options, factory, name=f"reward-{self.scorer}-{i}"))
            self._queues.append(deque())
        try:
            self.pids = ray.get([a.ping.remote() for a in self.actors], timeout=startup_timeout_s)
            self.inputs = ray.get(self.actors[0].inputs.remote())  # what the scorer declares (rewards/base.py)
        except Exception as err:
            self.shutdown()
            raise RewardActorError(self.scorer, f"reward actors failed to start: {err}") from err

    # -- submit -------------------------------------------------------------------------------------------

    def submit(self, images: np.ndarray | ray.ObjectRef, prompts: Sequence[str],
               metadata: Sequence[Mapping] | None = None, *, groups=None, progress: Progress | None = None,
               latents=None) -> RewardHandle:
        """Split into requests of at most batch_size_per_request images (a groupwise scorer's at group
        boundaries), dispatch each to the least busy actor, return at once. `images`: an array, or the
        ObjectRef of one (one image per prompt; the actors check it), which each request passes on with its
        rows. `groups` (int [B]; None: one group per run of the same prompt), `progress` and `latents` ([B, ...], or
        the ObjectRef of them, rows as `images`) reach the scorer only where it declares them."""
        by_ref = isinstance(images, ray.ObjectRef)
        metadata = validate_metadata(prompts, metadata) if by_ref else validate_batch(images, prompts, metadata)
        size = len(prompts)
        if self.inputs["groupwise"]:
            groups = validate_groups(prompt_groups(prompts) if groups is None else groups, size)
        else:
            groups = None
        if self.inputs["wants_latents"] and latents is not None and not isinstance(latents, ray.ObjectRef):
            if len(latents) != size:
                raise ValueError(f"reward scorer {self.scorer!r}: {size} images but {len(latents)} latents")
            latents = ray.put(latents)  # once: every request takes its rows from it
        latents = latents if self.inputs["wants_latents"] else None
        progress = progress if self.inputs["wants_progress"] else None
        if latents is not None and not by_ref:  # one object each, so every request reads the same rows of both
            images, by_ref = ray.put(np.ascontiguousarray(images)), True
        requests = []
        token = uuid.uuid4().hex[:12]
        for k, (start, stop) in enumerate(request_rows(size, self.config.batch_size_per_request, groups)):
            actor = min(range(len(self.actors)), key=lambda i: len(self._queues[i]))
            request = _Request(f"{self.scorer}-{token}-{k}",
                               images if by_ref else ray.put(np.ascontiguousarray(images[start:stop])),
                               list(prompts[start:stop]), list(metadata[start:stop]), actor,
                               rows=(start, stop) if by_ref else None,
                               groups=None if groups is None else groups[start:stop], progress=progress,
                               latents=latents)
            self._dispatch(request)
            requests.append(request)
        return RewardHandle(self.scorer, size, requests, list(prompts))

    def _dispatch(self, request: _Request) -> None:
        request.attempts += 1
        request.submitted_at = time.monotonic()
        request.ref = self.actors[request.actor].score.remote(
            request.request_id, request.images, request.prompts, request.metadata, request.rows,
            groups=request.groups, progress=request.progress, latents=request.latents,
        )
        queue = self._queues[request.actor]
        queue.append((request, request.ref))
        request.started_at = request.submitted_at if len(queue) == 1 else None
        self.metrics.queue_depth.set(sum(len(q) for q in self._queues), tags={"scorer": self.scorer})

    def _advance_queues(self) -> None:
        """Drop finished calls from the heads of the actors' queues (an actor runs its calls in order);
        the new head's clock starts now. Calls of abandoned handles leave the queue here too."""
        now = time.monotonic()
        for queue in self._queues:
            while queue and ray.wait([queue[0][1]], timeout=0)[0]:
                queue.popleft()
                if queue:
                    queue[0][0].started_at = now
        self.metrics.queue_depth.set(sum(len(q) for q in self._queues), tags={"scorer": self.scorer})

    def in_flight(self) -> int:
        """Calls dispatched to actors and not finished yet, over all actors."""
        self._advance_queues()
        return sum(len(q) for q in self._queues)

    # -- gather -------------------------------------------------------------------------------------------

    def gather(self, handle: RewardHandle) -> ScoreResult:
        """Block until every request of `handle` is answered; per-image scores in submission order."""
        if handle.scorer != self.scorer:
            raise ValueError(f"handle of scorer {handle.scorer!r} given to the pool of {self.scorer!r}")
        pending = {r.request_id: r for r in handle.requests if r.request_id not in self._done}
        while pending:
            self._advance_queues()
            now = time.monotonic()
            for request in list(pending.values()):
                if request.started_at is not None and now - request.started_at > self.config.timeout_s:
                    self._on_timeout(request)
                    del pending[request.request_id]
            if not pending:
                break
            clocks = [r.started_at + self.config.timeout_s - now for r in pending.values() if r.started_at is not None]
            wait_s = max(0.0, min(clocks, default=self.config.timeout_s)) + 0.01
            by_ref = {r.ref: r for r in pending.values()}
            ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=wait_s)
            for ref in ready:
                request = by_ref[ref]
                if self._collect(request):
                    del pending[request.request_id]
        self._advance_queues()
        responses = [self._done.pop(r.request_id) for r in handle.requests]
        joined = ScoreResult.concat([r.result for r in responses])
        failed = sum(len(r.prompts) for r in handle.requests if r.failed)  # counted when they failed
        self._count_unscored("reported", int((~joined.scored).sum()) - failed)
        result = self._apply_nan_policy(joined, handle.prompts)
        if result.valid.any():  # Ray's counters refuse an increment of 0
            self.metrics.images.inc(int(result.valid.sum()), tags={"scorer": self.scorer})
        return result

    def _collect(self, request: _Request) -> bool:
        """Read a finished request; True when it has its answer, False when it was resubmitted."""
        try:
            response: ScoreResponse = ray.get(request.ref)
        except ActorUnavailableError as err:
            # The actor is restarting (Ray's answer for calls queued on a killed actor, and for calls made
            # before the restart finished): the call did not complete. Resubmit, without counting it as
            # a second death of the request.
            self.metrics.failures.inc(tags={"scorer": self.scorer, "kind": "actor_unavailable"})
            request.attempts -= 1
            self.resubmitted_total += 1
            if request.unavailable >= _MAX_UNAVAILABLE:
                raise RewardActorError(self.scorer, f"actor reward-{self.scorer}-{request.actor} stayed unavailable "
                                       f"through {_MAX_UNAVAILABLE} retries of request {request.request_id}: {err}") from err
            request.unavailable += 1
            self._redispatch_when_back(request)
            return False
        except _ACTOR_LOST as err:
            self.metrics.failures.inc(tags={"scorer": self.scorer, "kind": "actor_lost"})
            if request.attempts >= 2:
                raise RewardActorError(self.scorer, f"actor reward-{self.scorer}-{request.actor} lost request "
                                       f"{request.request_id} twice: {err}") from err
            self.resubmitted_total += 1
            self._redispatch_when_back(request)
            return False
        self.metrics.latency.observe(time.monotonic() - request.submitted_at, tags={"scorer": self.scorer})
        if request.request_id in self._done:  # answered already: neither its scores nor its failure count twice
            self.duplicates_ignored += 1
            return True
        if response.error is not None:
            self.metrics.failures.inc(tags={"scorer": self.scorer, "kind": "request_error"})
            if response.input_error:
                raise RewardRequestError(self.scorer, f"request {request.request_id} was refused: {response.error}")
            reason = response.error.splitlines()[0]
            response = self._unscored(request, "error", f"request {request.request_id} failed in the worker: {reason}")
        self._done[request.request_id] = response
        return True

    def _redispatch_when_back(self, request: _Request) -> None:
        """Wait (up to timeout_s) until the request's actor answers a ping, then send the request again
        under the same id. Calls made during a restart are refused outright, so dispatching blindly would
        burn the one resubmission on the restart itself."""
        actor = self.actors[request.actor]
        name = f"actor reward-{self.scorer}-{request.actor}"
        try:
            call_when_available(actor.ping.remote, f"{name} after a restart", self.config.timeout_s,
                                retry_on=(ActorUnavailableError,), poll_s=0.1)
        except ActorNotBackError as err:
            raise RewardActorError(self.scorer, f"{err} (this scorer's timeout_s)") from None
        except RayActorError as err:
            raise RewardActorError(self.scorer, f"{name} did not restart (max_restarts={self.config.max_restarts}): "
                                   f"{err}") from err
        self._dispatch(request)

    def _on_timeout(self, request: _Request) -> None:
        """Leave the request's images unscored and restart its hung actor (a hung scorer cannot be
        interrupted). Ray answers the actor's queued calls as lost, and `_collect` resubmits them."""
        self.metrics.failures.inc(tags={"scorer": self.scorer, "kind": "timeout"})
        ray.kill(self.actors[request.actor], no_restart=False)
        self._done[request.request_id] = self._unscored(
            request, "timeout", f"request {request.request_id} ({len(request.prompts)} images) exceeded timeout_s="
            f"{self.config.timeout_s:g} on actor reward-{self.scorer}-{request.actor}; the actor was restarted")

    def _unscored(self, request: _Request, kind: str, reason: str) -> ScoreResponse:
        """The response standing for a failed request: its images unscored, counted once under `kind`."""
        request.failed = True
        self._count_unscored(kind, len(request.prompts))
        return ScoreResponse(request.request_id, self.scorer, ScoreResult.unscored(len(request.prompts), reason),
                             None, time.monotonic() - request.submitted_at, 0)

    def _count_unscored(self, kind: str, images: int) -> None:
        if images > 0:
            self.unscored_total[kind] = self.unscored_total.get(kind, 0) + images
            self.metrics.unscored.inc(images, tags={"scorer": self.scorer, "kind": kind})

    def _apply_nan_policy(self, result: ScoreResult, prompts: Sequence[str]) -> ScoreResult:
        """Non-finite numbers a scorer returned as scores (not the images it reported unscored)."""
        bad = result.scored & ~np.isfinite(result.reward)
        if not bad.any():
            return result
        self.metrics.nonfinite.inc(int(bad.sum()), tags={"scorer": self.scorer})
        if self.nan_policy == "fail":
            self.metrics.failures.inc(tags={"scorer": self.scorer, "kind": "nonfinite"})
            shown = [prompts[i] for i in np.flatnonzero(bad)[:3]]
            raise NonFiniteRewardError(self.scorer, f"{int(bad.sum())} non-finite scores (nan_policy='fail'), "
                                       f"e.g. for prompts {shown}")
        self._count_unscored("nonfinite", int(bad.sum()))
        error = f"{int(bad.sum())} non-finite score(s) masked (nan_policy='mask')"
        return replace(result, scored=result.scored & ~bad, errors=(*result.errors, error))

    def score(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None,
              **context) -> ScoreResult:
        """submit + gather."""
        return self.gather(self.submit(images, prompts, metadata, **context))

    def shutdown(self) -> None:
        """Kill this pool's actors for good (frees their names)."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


@dataclass(frozen=True)
class RewardBatch:
    """Every scorer's per-image results and their combination (rewards/combine.py)."""

    results: dict[str, ScoreResult]
    combined: CombinedRewards

    def metrics(self) -> dict[str, float]:
        """Namespaced means for logging: reward/<scorer>/mean, std, <diagnostic>, and the counts `scored` and
        `unscored` (images the scorer failed on, or returned non-finite for: never counted as rewards)."""
        out = {}
        for name, result in self.results.items():
            finite = result.reward[result.valid]
            out[f"reward/{name}/mean"] = float(finite.mean()) if finite.size else float("nan")
            out[f"reward/{name}/std"] = float(finite.std()) if finite.size else float("nan")
            out[f"reward/{name}/scored"] = float(result.valid.sum())
            out[f"reward/{name}/unscored"] = float((~result.valid).sum())
            for diag, values in result.diagnostics.items():
                out[f"reward/{name}/{diag}"] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        return out


class RewardPools:
    """All configured scorers: one ScorerPool each; submit/gather across them."""

    def __init__(self, config: RewardsConfig, factories: Mapping[str, Callable[[], Scorer]] | None = None):
        self.config = config
        factories = dict(factories or {})
        self.pools: dict[str, ScorerPool] = {}
        try:
            for scorer in config.scorers:
                self.pools[scorer.name] = ScorerPool(scorer, config.nan_policy, factories.get(scorer.name))
        except Exception:
            self.shutdown()
            raise

    def submit(self, images: np.ndarray | ray.ObjectRef, prompts: Sequence[str],
               metadata: Sequence[Mapping] | None = None, **context) -> dict[str, RewardHandle]:
        """Dispatch to every scorer at once; non-blocking. `context`: groups, progress, latents
        (`ScorerPool.submit`), each handed to the scorers that declare it."""
        return {name: pool.submit(images, prompts, metadata, **context) for name, pool in self.pools.items()}

    def gather(self, handles: Mapping[str, RewardHandle]) -> RewardBatch:
        results = {name: self.pools[name].gather(handle) for name, handle in handles.items()}
        return RewardBatch(results, combine({n: r.reward for n, r in results.items()}, self.config.weights()))

    def score(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None,
              **context) -> RewardBatch:
        return self.gather(self.submit(images, prompts, metadata, **context))

    def counters(self) -> dict[str, float]:
        """Requests resubmitted after an actor's death, and answers ignored because their request was
        answered already (each request id is accepted once: no image is scored twice into a result)."""
        return {"reward/requests_resubmitted": float(sum(p.resubmitted_total for p in self.pools.values())),
                "reward/duplicates_ignored": float(sum(p.duplicates_ignored for p in self.pools.values()))}

    def shutdown(self) -> None:
        for pool in self.pools.values():
            pool.shutdown()
        self.pools = {}
