"""What the Ray dashboard and Prometheus show of each long-lived process of a run: its repr, its memory,
its policy version, and how often Ray restarted it.

- `describe`: the actor classes' `__repr__` (`RolloutWorker(role=rollout, rank=0, policy_version=0)`),
  which Ray shows in the dashboard's Repr column and as the actor's log prefix. Ray reads it once, when
  the actor's process starts (Ray 2.60, measured: it keeps the value __init__ left), so the version there
  is the one the process started with; the live one is the gauge below.
- `report_process`: a daemon thread in the process sets `flowray_actor_rss_bytes{actor, role}` and
  `flowray_actor_policy_version{actor, role}` every few seconds (Ray exports them as `ray_flowray_*`,
  one series per process; a dead process's series leaves the endpoint). Actors start it in __init__, the
  driver in `Trainer.setup`; outside a Ray actor (in-process tests, `launch.py eval`) it does nothing.
- `actor_restarts`: Ray's restart count of each of this job's actors, which the driver exports as
  `flowray_actor_restarts{actor, role}` (cluster/metrics.py), so a killed actor shows as a step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

RSS_GAUGE = "flowray_actor_rss_bytes"
VERSION_GAUGE = "flowray_actor_policy_version"
REPORT_EVERY_S = 5.0  # Ray's metrics agent exports every ~5-10 s: reporting faster only burns CPU
_REPORTING: dict[str, dict] = {}  # name -> {"version": callable}: one thread per name and process


def describe(cls: str, role: str, name: str, **fields) -> str:
    """`Cls(role=rollout, rank=0, policy_version=3)`; the rank is the number ending the actor's name."""
    rank = name.rsplit("-", 1)[-1]
    extra = "".join(f", {k}={v}" for k, v in fields.items())
    return f"{cls}(role={role}, rank={rank if rank.isdigit() else name}{extra})"


def _in_ray_actor() -> bool:
    try:
        import ray

        return ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None
    except Exception:  # noqa: BLE001 - no Ray, or no runtime context: not an actor
        return False


def report_process(role: str, name: str, version: Callable[[], int] | None = None, *, driver: bool = False,
                   every_s: float = REPORT_EVERY_S) -> threading.Thread | None:
    """Start the process's metrics thread (see the module docstring); returns it, or None where there is
    no Ray actor (`driver`: the Ray driver process reports too) or one reports `name` already (a second
    Trainer in one process: its version is reported from now on)."""
    if not (_in_ray_actor() or driver):
        return None
    if name in _REPORTING:
        _REPORTING[name]["version"] = version
        return None
    source = _REPORTING[name] = {"version": version}
    import psutil
    from ray.util.metrics import Gauge

    tags, keys = {"actor": name, "role": role}, ("actor", "role")
    rss = Gauge(RSS_GAUGE, "Resident memory of a flowray process (driver, each actor).", tag_keys=keys)
    held = Gauge(VERSION_GAUGE, "Policy version a rollout actor or learner rank holds.", tag_keys=keys) if version else None
    process = psutil.Process()

    def beat() -> None:
        while True:
            try:
                rss.set(float(process.memory_info().rss), tags=tags)
                if held is not None and source["version"] is not None:
                    held.set(float(source["version"]()), tags=tags)
            except Exception:  # noqa: BLE001 - the process is shutting down; a missed sample is harmless
                return
            time.sleep(every_s)

    thread = threading.Thread(target=beat, daemon=True, name=f"flowray metrics {name}")
    thread.start()
    return thread


def actor_restarts(names: set[str] | None = None) -> dict[str, int]:
    """{actor name: times Ray restarted it} for this job's named actors (`names`: only those); {} where
    the table cannot be read. Read from the GCS's actor table: Ray's public state API goes through the
    dashboard, which a cluster need not run, and this runs once per iteration."""
    try:
        import ray
        from ray._private import state

        table = state.actors(job_id=ray.JobID.from_hex(ray.get_runtime_context().get_job_id()))
    except Exception:  # noqa: BLE001 - an older or newer Ray without this table: no restart counts
        return {}
    out: dict[str, int] = {}
    for info in table.values():
        name = info.get("Name")
        if name and (names is None or name in names):
            out[name] = max(out.get(name, 0), int(info.get("NumRestarts", 0)))
    return out
