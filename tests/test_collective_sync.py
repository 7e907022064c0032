"""The collective weight-sync backend under async mode and actor restarts: learner rank 0 never waits
inside a broadcast while the rollout actors are still sampling, a restarted rollout actor gets a new
group, and the old group is torn down on every surviving member."""

from __future__ import annotations

import os
import signal
import socket
import threading

import pytest
import ray
import torch

from cluster.trainer import Trainer
from common.collective import SyncGroup
from common.weight_buckets import plan_for
from learner.config import LearnerConfig
from learner.engine import free_port
from learner.worker import LearnerWorker
from models.config import ModelConfig, SamplingConfig
from tests.test_system import _config, _digest

pytestmark = pytest.mark.system


def test_async_broadcast_waits_for_sampling_and_a_restarted_actor_gets_a_new_group(local_ray, tiny_sd3_path, tmp_path):
    cfg = _config(tiny_sd3_path, tmp_path, **{
        "cluster.num_learner_ranks": 1, "learner.zero_stage": 0, "cluster.sync_backend": "collective",
        "cluster.async_mode": "true", "sampling.num_steps": 40, "data.images_per_iteration": 96,
    })  # fmt: skip
    with Trainer(cfg) as trainer:
        pending = trainer.submit_rollout(0)  # the next iteration's sampling, in flight during the sync
        report = trainer.sync_weights.sync(1, busy=pending.refs())
        sampling = sum(r.seconds for r in ray.get(pending.refs()))
        print(f"sampling {sampling:.2f} s, broadcast {report.broadcast_seconds:.3f} s")
        assert sampling > 1.0, "the rollout in flight is too short to tell waiting from not waiting"
        # Without waiting for the rollout, learner rank 0 sits in the broadcast for most of the sampling.
        assert report.broadcast_seconds < 0.25 * sampling, (report.broadcast_seconds, sampling)
        assert _digest(trainer.rollouts[0]) == _digest(trainer.learners[0], "export_sampling_weights")

        os.kill(ray.get(trainer.rollouts[0].pid.remote()), signal.SIGKILL)  # the actor restarts
        trainer.sync_weights.sync(2)  # the group is rebuilt with the new process
        assert _digest(trainer.rollouts[0]) == _digest(trainer.learners[0], "export_sampling_weights")
        assert ray.get(trainer.rollouts[0].get_version.remote()) == 2


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # closed connections may linger in TIME_WAIT
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def test_rejoining_closes_the_old_group(tiny_sd3_path):
    learner = LearnerWorker(ModelConfig(path=tiny_sd3_path), SamplingConfig(), LearnerConfig())
    old_port = free_port()
    peer = {}
    t = threading.Thread(target=lambda: peer.setdefault(1, SyncGroup("127.0.0.1", old_port, 1, 2, torch.device("cpu"))))
    t.start()
    learner.join_sync_group("127.0.0.1", old_port, 2)
    t.join()
    old = learner.sync_group
    new_port = free_port()
    t = threading.Thread(target=lambda: peer.setdefault(2, SyncGroup("127.0.0.1", new_port, 1, 2, torch.device("cpu"))))
    t.start()
    learner.join_sync_group("127.0.0.1", new_port, 2)  # a rebuild after a rollout actor restarted
    t.join()
    peer[1].close()
    assert old.pg is None and _port_is_free(old_port), "the old group's store still holds its port"
    (spec,) = plan_for({"w": torch.zeros(4)})
    received = {}
    t = threading.Thread(target=lambda: received.setdefault("w", peer[2].receive_bucket(spec)[0]))
    t.start()
    learner.sync_group.send_bucket(spec, torch.arange(4.0))
    t.join()
    assert torch.equal(received["w"], torch.arange(4.0))
