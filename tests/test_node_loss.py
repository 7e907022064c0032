"""Node loss on a local multi-node cluster (ray.cluster_utils.Cluster: its own GCS, raylets and object stores
on this machine). The head has no CPUs, so every bundle lands on a worker node the test may kill; the
placement table says which node holds which actor, and `remove_node(allow_graceful=False)` kills that
node's raylet, object store and workers at once, as a machine that dies.

- The node holding the rollout actor dies while it samples: Ray reschedules the actor's bundle (SPREAD)
  onto the node that is left and restarts the actor there, the driver resamples the lost groups with their
  seeds, and the run continues and ends with the undisturbed run's weights, bit for bit.
- The node holding learner rank 1 (ZeRO-2, one rank per node, STRICT_SPREAD) dies before an update: the
  driver stops with an error naming learner-1 and --resume; once a node returns, --resume continues from the
  last checkpoint and ends with the undisturbed run's weights, every iteration and group trained once.
"""

from __future__ import annotations

import json

import pytest
import ray
from safetensors.torch import load_file

from cluster.trainer import LearnerRankError, Trainer
from tests.test_job_submit import _free_port
from tests.test_system import _config

pytestmark = [pytest.mark.system, pytest.mark.slow]

# The GCS marks a node dead after this many missed health checks (Ray's defaults take ~30 s).
FAST_NODE_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
                   "health_check_failure_threshold": 3}


@pytest.fixture
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "gcs_server_port": _free_port(), "include_dashboard": False, "dashboard_agent_listen_port": _free_port(),
        "metrics_export_port": _free_port(), "_system_config": FAST_NODE_DEATH})
    try:
        for _ in range(2):
            c.add_node(num_cpus=2)
        ray.init(address=c.address, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _cfg(tiny_sd3_path, out, **over):
    return _config(tiny_sd3_path, out, **{
        "iterations": 3, "logging.checkpoint_every": 1, "logging.eval_base": "false",
        "rewards.scorers": "[{name: shapes_quality, num_cpus_per_actor: 0.01}]", **over})


def _node_of(trainer: Trainer, bundle: int, cluster):
    node_id = ray.util.placement_group_table(trainer.placement.group)["bundles_to_node_id"][bundle]
    return next(n for n in cluster.worker_nodes if n.node_id == node_id)


def _final_weights(out, iterations=3) -> dict:
    return load_file(out / "checkpoints" / f"iter_{iterations:06d}" / "trainable.safetensors")


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)


def _rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_losing_the_rollout_node_mid_rollout_continues_bit_exactly(cluster, tiny_sd3_path, tmp_path):
    over = {"cluster.num_learner_ranks": 1, "learner.zero_stage": 0, "cluster.placement_strategy": "SPREAD"}
    with Trainer(_cfg(tiny_sd3_path, tmp_path / "straight", **over)) as trainer:
        trainer.train()
    with Trainer(_cfg(tiny_sd3_path, tmp_path / "lost", **over)) as trainer:
        rollout_bundle = trainer.placement.rollout_bundle(0)
        doomed = _node_of(trainer, rollout_bundle, cluster)
        assert doomed is not _node_of(trainer, trainer.placement.learner_bundle(0), cluster), "SPREAD kept them apart"
        submit = trainer.submit_rollout

        def submit_then_lose_the_node(iteration):
            pending = submit(iteration)
            if iteration == 1:  # iteration 1's groups are in flight on the rollout actor
                cluster.remove_node(doomed, allow_graceful=False)
            return pending

        trainer.submit_rollout = submit_then_lose_the_node
        trainer.train()
        assert _node_of(trainer, rollout_bundle, cluster) is not doomed  # rescheduled onto what is left
    rows = _rows(tmp_path / "lost")
    assert [r["iteration"] for r in rows] == [0, 1, 2] and all(sorted(r["groups"]) == [0, 1] for r in rows)
    assert rows[1]["groups_resampled"] == [0, 1], "the loss must land while iteration 1 was sampled"
    assert _same(_final_weights(tmp_path / "lost"), _final_weights(tmp_path / "straight"))


def test_losing_learner_rank_1s_node_stops_then_resumes_bit_exactly(cluster, tiny_sd3_path, tmp_path):
    over = {"cluster.num_learner_ranks": 2, "learner.zero_stage": 2, "cluster.colocate": "true",
            "cluster.placement_strategy": "STRICT_SPREAD"}
    with Trainer(_cfg(tiny_sd3_path, tmp_path / "straight", **over)) as trainer:
        trainer.train()
    out = tmp_path / "lost"
    with Trainer(_cfg(tiny_sd3_path, out, **over)) as trainer:
        doomed = _node_of(trainer, trainer.placement.learner_bundle(1), cluster)
        update = trainer.update

        def lose_the_node_then_update(groups, iteration):
            if iteration == 2:  # after checkpoint 2, before the update of iteration 2
                cluster.remove_node(doomed, allow_graceful=False)
            return update(groups, iteration)

        trainer.update = lose_the_node_then_update
        with pytest.raises(LearnerRankError, match=r"learner-1\b.*--resume"):
            trainer.train()
    cluster.add_node(num_cpus=2)  # the node returns (a new raylet on this machine)
    with Trainer(_cfg(tiny_sd3_path, out, **over), resume=True) as trainer:
        assert trainer.iteration == 2
        trainer.train()
    rows = _rows(out)
    assert [r["iteration"] for r in rows] == [0, 1, 2] and all(sorted(r["groups"]) == [0, 1] for r in rows)
    assert len((out / "resumes.jsonl").read_text().splitlines()) == 1
    assert _same(_final_weights(out), _final_weights(tmp_path / "straight"))
