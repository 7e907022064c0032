"""When the driver submits the next iteration's rollout, and which side holds shared bundles.

One class per mode, picked from the config in one place (`SCHEDULES`, `schedule_for`):
  - Synchronous (the default): iteration k+1 is submitted once iteration k's weights are synced (and
    probed), so it samples with them; the sampling overlaps evaluation and checkpointing.
  - Asynchronous (cluster.async_mode): iteration k+1 is submitted as soon as iteration k's rollout is
    collected, so it samples with the weights before k's update (staleness 1, logged) while the reward
    models score and the learner trains; the sync does not wait for those calls.
  - ColocatedOffload (cluster.colocate_offload): rollout actors and learner ranks share bundles and take
    turns (`hold`), so iteration k+1 is submitted only after evaluation and checkpointing, which bring the
    learner's state back.
The driver's loop (cluster/trainer.py) tells the schedule which point it has reached ('rollout', 'sync',
'checkpoint'); the schedule submits there or not. Each mode's order of operations is the one the loop had
before it was split out, so results are the same bit for bit.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import ray

MAX_ROLLOUT_RETRIES = 3  # per actor and iteration; the actors themselves restart without limit


@contextmanager
def timed(metrics: dict, key: str) -> Iterator[None]:
    """Add the seconds the block takes to metrics[key] (a stage's time, measured directly)."""
    start = time.perf_counter()
    yield
    metrics[key] = metrics.get(key, 0.0) + time.perf_counter() - start


@dataclass
class PendingRollout:
    """The rollout calls in flight: one per group, each with its actor and request."""

    calls: dict = field(default_factory=dict)  # ObjectRef -> (actor index, GroupRequest)
    by_actor: dict = field(default_factory=lambda: defaultdict(set))  # actor index -> its group indices

    def add(self, actors: list, a: int, request) -> None:
        self.calls[actors[a].rollout_by_reference.remote(request)] = (a, request)
        self.by_actor[a].add(request.group_index)

    def refs(self) -> list[ray.ObjectRef]:
        return list(self.calls)

    def drop_actor(self, a: int) -> list:
        """Forget actor `a`'s calls in flight (they fail with it); returns their requests."""
        lost = [ref for ref, (b, _) in self.calls.items() if b == a]
        return [self.calls.pop(ref)[1] for ref in lost]


class Schedule:
    """What every mode shares: the rollout in flight, submitted at the loop's point `submits_after`."""

    submits_after: ClassVar[str]  # 'rollout', 'sync' or 'checkpoint': where iteration k+1 is submitted

    def __init__(self, submit: Callable[[int], PendingRollout], learners: Sequence = (), rollouts: Sequence = ()):
        self.submit, self.learners, self.rollouts = submit, list(learners), list(rollouts)
        self.pending: PendingRollout | None = None
        self.iterations = 0
        self.resident = "both"  # the side on the shared bundles (`hold`); both where they are not shared

    def start(self, iteration: int, iterations: int) -> None:
        """A loop over iterations [iteration, iterations) begins: submit its first rollout."""
        self.iterations = iterations
        self.pending = self.submit(iteration) if iteration < iterations else None

    def take(self) -> PendingRollout:
        """The rollout in flight for the iteration starting now (the loop collects it)."""
        pending, self.pending = self.pending, None
        return pending

    def reached(self, point: str, iteration: int, stopping: bool = False) -> None:
        """The loop has finished `point` ('rollout', 'sync', 'checkpoint') of `iteration`: submit the next
        iteration's rollout if this schedule does it here, and there is a next one (`stopping`: a budget
        ends the run after this iteration)."""
        if point == self.submits_after and iteration + 1 < self.iterations and not stopping:
            self.pending = self.submit(iteration + 1)

    def in_flight(self) -> list[ray.ObjectRef]:
        """The rollout calls running now, which the sync must not wait for (asynchronous only)."""
        return self.pending.refs() if self.pending is not None else []

    def hold(self, side: str) -> float:
        """Make `side` ('learner' or 'rollout') resident on the shared bundles; returns the seconds it took
        (0: the bundles are not shared)."""
        return 0.0


class Synchronous(Schedule):
    """The next rollout is submitted after the sync (and the probe), before evaluation and checkpointing."""

    submits_after = "sync"


class Asynchronous(Schedule):
    """The next rollout is submitted as soon as this one is collected, before the reward: it samples with
    the weights before this iteration's update (staleness 1)."""

    submits_after = "rollout"


class ColocatedOffload(Schedule):
    """Rollout actors and learner ranks take turns on shared bundles: `hold(side)` offloads the other side
    first (common/offload.py), so a bundle never holds both. The next rollout is submitted after the
    checkpoint, which brings the learner's state back."""

    submits_after = "checkpoint"

    def hold(self, side: str) -> float:
        if self.resident == side:
            return 0.0
        start = time.perf_counter()
        idle, active = (self.rollouts, self.learners) if side == "learner" else (self.learners, self.rollouts)
        ray.get([actor.offload.remote() for actor in idle])
        ray.get([actor.reload.remote() for actor in active])
        self.resident = side
        return time.perf_counter() - start


# (cluster.async_mode, cluster.colocate_offload) -> the schedule; the config refuses both at once.
SCHEDULES: dict[tuple[bool, bool], type[Schedule]] = {
    (False, False): Synchronous,
    (True, False): Asynchronous,
    (False, True): ColocatedOffload,
}


def schedule_for(cluster, submit: Callable[[int], PendingRollout], learners: Sequence, rollouts: Sequence) -> Schedule:
    """The schedule of the config's cluster section (the one place a mode is chosen)."""
    return SCHEDULES[(cluster.async_mode, cluster.colocate_offload)](submit, learners, rollouts)
