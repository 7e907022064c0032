"""Calling a Ray actor that may be restarting.

When an actor with max_restarts > 0 dies, Ray brings up a new process under the same handle. Until it
is up, calls are refused at once (ActorUnavailableError, or ActorDiedError for calls that were in
flight). Callers that must reach the actor again (the reward pool resubmitting a lost request, weight
sync re-sending weights) wait here, bounded by a deadline, instead of burning their retry on the
restart itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import ray
from ray.exceptions import GetTimeoutError, RayActorError


class ActorNotBackError(RuntimeError):
    """The actor neither answered nor came back before the deadline."""


def call_when_available(make_call: Callable[[], ray.ObjectRef], what: str, timeout_s: float = 600.0,
                        retry_on: tuple[type[BaseException], ...] = (RayActorError,), poll_s: float = 0.5):
    """`ray.get(make_call())`, made again every `poll_s` while it fails with one of `retry_on`.

    `make_call` must build a fresh call each time (a refused call's ObjectRef stays refused). Errors not
    in `retry_on` propagate unchanged, so a caller can treat, say, a permanent ActorDiedError apart from
    a restart. Raises ActorNotBackError, naming `what`, once `timeout_s` has passed: a hung actor is
    reported, never waited on forever.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(make_call(), timeout=max(0.1, deadline - time.monotonic()))
        except GetTimeoutError:
            raise ActorNotBackError(f"{what}: no answer within {timeout_s:g} s") from None
        except retry_on as err:
            if time.monotonic() > deadline:
                raise ActorNotBackError(f"{what}: the actor did not come back within {timeout_s:g} s") from err
            time.sleep(poll_s)
