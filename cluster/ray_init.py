"""Connecting the driver to Ray: a running cluster (an address, or RAY_ADDRESS under `ray job
submit`), else a local single-node Ray sized to the run.

A local Ray gets max(this machine's cores, the CPUs the run reserves) logical CPUs, so the default
preset (a rollout actor, a learner rank and two reward actors) starts on a 2-core laptop: the actors
share the cores, slower but correct. On a real cluster nothing is resized; `Trainer.setup` refuses a
run that cannot fit instead of waiting forever for actors Ray can never place.
"""

from __future__ import annotations

import math
import os

from cluster.config import ExperimentConfig
from cluster.preflight import PreflightReport, check_resources, resource_demand

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def cpu_demand(cfg: ExperimentConfig) -> int:
    """Logical CPUs the run reserves: rollout actors, learner ranks and reward actors together."""
    return math.ceil(sum(part["CPU"] for part in resource_demand(cfg).values()) - 1e-9)


def init_ray(cfg: ExperimentConfig, address: str | None = None, *, log_to_driver: bool = True) -> None:
    """`ray.init` for a run of `cfg`: connect to `address` (or RAY_ADDRESS), else start a local Ray
    (dashboard on loopback unless `cluster.dashboard_host` says otherwise, with a warning)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver)
        return
    c = cfg.cluster
    start_local_ray(cpu_demand(cfg), include_dashboard=c.include_dashboard, dashboard_host=c.dashboard_host,
                    log_to_driver=log_to_driver)


def start_local_ray(cpus_needed: float, *, include_dashboard: bool = False, dashboard_host: str = "127.0.0.1",
                    log_to_driver: bool = True) -> None:
    """A single-node Ray with max(this machine's cores, cpus_needed) logical CPUs. The benchmarks call
    this directly (dashboard off); runs go through `init_ray`."""
    import ray

    if include_dashboard and dashboard_host not in LOOPBACK:
        print(f"[flowray] WARNING: the Ray dashboard will listen on {dashboard_host}; it can run arbitrary code. "
              "Keep it on a trusted network (see README, 'Security').", flush=True)
    ray.init(
        address="local",
        num_cpus=max(os.cpu_count() or 1, math.ceil(cpus_needed - 1e-9)),
        include_dashboard=include_dashboard,
        dashboard_host=dashboard_host,
        log_to_driver=log_to_driver,
    )


class InsufficientResources(RuntimeError):
    """The connected Ray cluster cannot hold the run's actors: Ray would queue them forever."""


def require_fit(cfg: ExperimentConfig) -> None:
    """Raise InsufficientResources, naming the config keys behind the demand, when the connected
    cluster's total CPUs or GPUs are fewer than the run reserves."""
    import ray

    report = PreflightReport(resources_source="the connected Ray cluster")
    check_resources(cfg, report, dict(ray.cluster_resources()), local=False)
    if not report.ok:
        raise InsufficientResources("; ".join(f"{c.key}: {c.message}" for c in report.errors))
