"""common.actor_calls.call_when_available against real restarting, hung and dead actors on local Ray."""

import os
import time

import pytest
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from common.actor_calls import ActorNotBackError, call_when_available


@ray.remote(max_restarts=1, max_task_retries=0)
class Flaky:
    def __init__(self):
        self.started = time.time()

    def ping(self) -> float:
        return self.started

    def die(self) -> None:
        os._exit(1)

    def hang(self, seconds: float) -> str:
        time.sleep(seconds)
        return "late"


def test_waits_for_a_restarted_actor(local_ray):
    actor = Flaky.remote()
    first = ray.get(actor.ping.remote())
    with pytest.raises(RayActorError):
        ray.get(actor.die.remote())
    # The restarted process answers: a new constructor ran under the same handle.
    second = call_when_available(actor.ping.remote, "flaky after a restart", timeout_s=60)
    assert second > first
    ray.kill(actor)


def test_a_hung_actor_is_reported_at_the_deadline(local_ray):
    actor = Flaky.remote()
    ray.get(actor.ping.remote())
    start = time.monotonic()
    with pytest.raises(ActorNotBackError, match="hung scorer: no answer within 1 s"):
        call_when_available(lambda: actor.hang.remote(30), "hung scorer", timeout_s=1)
    assert time.monotonic() - start < 10
    ray.kill(actor)


def test_errors_outside_retry_on_propagate(local_ray):
    actor = Flaky.remote()
    ray.get(actor.ping.remote())
    ray.kill(actor, no_restart=True)
    # ray.kill is asynchronous: a call made at once can still be answered. Wait until the death is
    # visible, so the call below is certain to meet ActorDiedError rather than race the kill.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            ray.get(actor.ping.remote(), timeout=5)
        except ActorDiedError:
            break
        time.sleep(0.1)
    with pytest.raises(ActorDiedError):
        call_when_available(actor.ping.remote, "dead actor", timeout_s=30, retry_on=(ActorUnavailableError,))
