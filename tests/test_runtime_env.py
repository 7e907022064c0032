"""The driver's Hugging Face settings reach every process that loads weights (common/runtime_env.py): a rollout
actor and a reward actor see HF_HOME and HF_HUB_CACHE set on the driver after Ray started (so not inherited
from a raylet), and preflight's per-node check (cluster/preflight.py `check_nodes`) runs on the other node
of a two-node cluster in that environment, naming the node and the cache folder where the weights are not."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import ray

from cluster.config import REPO_ROOT, load_config

pytestmark = pytest.mark.system

SHAPES = REPO_ROOT / "configs" / "shapes_nft.yaml"


def process_env(pid: int) -> dict[str, str]:
    """The environment a process (a Ray actor's worker, on this machine) started with."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


class PidOnly:
    """Stands in for RolloutWorker (no model to load): cluster/actors.py's options are what is tested."""

    def __init__(self, *args, **kwargs):
        pass

    def pid(self) -> int:
        return os.getpid()


class Constant:
    def __call__(self, images, prompts, metadata=None):
        raise NotImplementedError  # never scored: only the actor's environment is read


def fake_hub_cache(cache: Path, repo_id: str, filename: str) -> Path:
    """The layout huggingface_hub's try_to_load_from_cache reads: refs/main -> snapshots/<commit>/<file>."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / filename).write_text(
        json.dumps({"_class_name": "StableDiffusion3Pipeline"})
    )
    return cache


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A head (the driver's node) and a second node whose `ray start` environment points the Hugging Face
    cache at a folder of its own, as a node-local disk would; the driver sets none."""
    from ray.cluster_utils import Cluster

    node_cache = tmp_path_factory.mktemp("node-cache")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    try:
        node = cluster.add_node(num_cpus=1, env_vars={"HF_HUB_CACHE": str(node_cache)})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield node.node_id, node_cache
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture
def by_value():
    """Actors cannot import this test file: its stand-ins travel pickled by value."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_rollout_and_reward_actors_see_the_drivers_hub_cache(two_nodes, by_value, monkeypatch, tmp_path):
    import cluster.actors
    from cluster.placement import create_placement
    from rewards.config import ScorerConfig
    from rewards.pool import ScorerPool

    hf = {
        "HF_HOME": str(tmp_path / "hf"),
        "HF_HUB_CACHE": str(tmp_path / "hub"),
        "HF_ENDPOINT": "http://hub.invalid",
    }
    for key, value in hf.items():  # set after Ray started: the raylet's environment does not have them
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(cluster.actors, "RolloutWorker", PidOnly)
    cfg = load_config(SHAPES, ["cluster.num_rollout_actors=1"])
    placement = create_placement(cfg.cluster)
    rollout = pool = None
    try:
        (rollout,) = cluster.actors.rollout_actors(cfg, placement, max_restarts=0)
        pool = ScorerPool(ScorerConfig(name="shapes_quality", num_cpus_per_actor=0.25), factory=Constant)
        envs = {"rollout-0": process_env(ray.get(rollout.pid.remote())), "reward": process_env(pool.pids[0])}
        for name, env in envs.items():
            assert {k: env.get(k) for k in hf} == hf, name
            assert env.get("HF_HUB_OFFLINE") == os.environ["HF_HUB_OFFLINE"] and "HF_TOKEN" not in env, name
        # max(1, floor(num_cpus_per_actor)) threads, as the scorer's own pools get
        assert envs["reward"]["OMP_NUM_THREADS"] == "1"
        # idle OpenMP threads sleep instead of spinning (common/runtime_env.py)
        assert {name: env.get("OMP_WAIT_POLICY") for name, env in envs.items()} == dict.fromkeys(envs, "PASSIVE")
    finally:
        if pool is not None:
            pool.shutdown()
        if rollout is not None:
            ray.kill(rollout)
        placement.remove()


def test_the_weights_check_runs_on_each_node_and_names_the_one_without_them(two_nodes, monkeypatch, tmp_path):
    from cluster.preflight import check_nodes, hosting_nodes

    node_id, node_cache = two_nodes
    for key in ("HF_HOME", "HF_HUB_CACHE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo_id = "flowray-test/tiny-sd3"
    cfg = load_config(SHAPES, [f"model.path={repo_id}"])
    assert set(hosting_nodes(cfg)) == {ray.get_runtime_context().get_node_id(), node_id}

    # Each node looks in its own cache (the driver's node in this process), where the model is not: offline,
    # their actors could not load it. The second node's error names it and its cache folder.
    address = next(n["NodeManagerAddress"] for n in ray.nodes() if n["NodeID"] == node_id)
    report = check_nodes(cfg)
    assert [e.key for e in report.errors] == ["model.path", "model.path"], report.summary()
    (error,) = [e for e in report.errors if f"node {address} ({node_id[:8]}" in e.message]
    assert str(node_cache) in error.message and "HF_HUB_OFFLINE" in error.message
    assert [e.message for e in check_nodes(cfg, skip_driver_node=True).errors] == [error.message]

    # A cache set on the driver is passed on to that node (common/runtime_env.py): found there.
    monkeypatch.setenv(
        "HF_HUB_CACHE", str(fake_hub_cache(tmp_path / "shared-cache", repo_id, "model_index.json"))
    )
    report = check_nodes(cfg, skip_driver_node=True)
    assert report.ok and [c.key for c in report.checks] == ["cluster.nodes"], report.summary()
    assert node_id[:8] in report.checks[0].message


def test_openmp_waits_passively_unless_the_driver_sets_the_policy_or_a_spin_count(monkeypatch):
    from common.runtime_env import actor_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    env = actor_env(2)["env_vars"]
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and "GOMP_SPINCOUNT" not in env and env["OMP_NUM_THREADS"] == "2"
    # libgomp lets GOMP_SPINCOUNT override the policy's spin count: a driver that sets it gets it in every actor
    monkeypatch.setenv("GOMP_SPINCOUNT", "10000")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    env = actor_env(1)["env_vars"]
    assert (env["GOMP_SPINCOUNT"], env["OMP_WAIT_POLICY"]) == ("10000", "ACTIVE")
