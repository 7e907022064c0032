"""A single-node run binds flowray's own listeners to loopback (a real local Ray, tiny model, 1 iteration).

flowray's listeners are the learner group's rendezvous (torch's TCPStore) with gloo's pair listeners, and
the weight-sync group's (common/collective.py). While the run trains, every listening TCP socket of the
run's processes (the driver and each of its actors) is read with psutil, and Ray's are told apart by Ray's
own bookkeeping: the GCS actor table records each actor's core-worker gRPC address and its owner's (the
driver's), the one listener Ray opens in those processes (measured: README, Security). A port that is
not one of those was opened by flowray, or by the libraries it drives, and must be on loopback.
"""

from __future__ import annotations

import ipaddress
import os

import psutil
import pytest
import ray

from cluster.trainer import Trainer
from tests.test_system import _config

pytestmark = pytest.mark.system


def _listeners(pid: int) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN}


def _is_loopback(ip: str) -> bool:
    """127.0.0.0/8, ::1, and IPv4-mapped loopback (::ffff:127.0.0.1); a wildcard (0.0.0.0, ::) is not."""
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)
    return (mapped or addr).is_loopback


def _run_processes() -> dict[int, tuple[str, set[int]]]:
    """pid -> (what it is, the ports Ray listens on in it) for the driver and this job's live actors.
    ray._private.state.actors() is the GCS actor table (no dashboard needed, which ray.util.state needs)."""
    job = ray.get_runtime_context().get_job_id()
    actors = [a for a in ray._private.state.actors().values() if a["JobID"] == job and a["State"] == "ALIVE"]
    processes = {a["Pid"]: (a["Name"] or a["ActorClassName"], {a["Address"]["Port"]}) for a in actors}
    driver_ports = {a["OwnerAddress"]["Port"] for a in actors if a["OwnerAddress"]["Port"]}
    processes[os.getpid()] = ("driver", driver_ports)
    return processes


def _own_listeners() -> dict[str, list[tuple[str, int]]]:
    """Every listener of the run's processes that is not Ray's, by process."""
    found = {}
    for pid, (name, ray_ports) in _run_processes().items():
        found[name] = sorted((ip, port) for ip, port in _listeners(pid) if port not in ray_ports)
    return found


def test_a_single_node_run_binds_its_own_listeners_to_loopback(local_ray, tiny_sd3_path, tmp_path):
    cfg = _config(tiny_sd3_path, tmp_path, iterations=1, **{
        "cluster.num_learner_ranks": 1, "learner.zero_stage": 0, "cluster.sync_backend": "collective",
        "logging.checkpoint_every": 0})
    seen = {}

    def snapshot(metrics: dict) -> bool:  # after the iteration's update and collective sync, mid-run
        seen.update(_own_listeners())
        return False

    with Trainer(cfg) as trainer:
        assert not trainer.placement.spans_nodes()
        trainer.train(stop=snapshot)
    # The groups' listeners were found (the test is not vacuous): the learner group's store and gloo
    # devices on learner rank 0, and the sync group's gloo device on the rollout actor.
    assert seen.get("learner-0") and seen.get("rollout-0"), seen
    wide = {name: [lst for lst in found if not _is_loopback(lst[0])] for name, found in seen.items()}
    assert not any(wide.values()), f"flowray listeners bound beyond loopback: {wide}"
