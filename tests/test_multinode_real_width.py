"""SD3.5-Medium's preset at published width (reduced depth) with ZeRO-3 in bf16 on two learner ranks
placed on two Ray nodes (a `ray.cluster_utils.Cluster` on this machine): one iteration with a
checkpoint, then a resumed second one, through scripts/multinode_real_width.py (which runs the FLUX
preset and ZeRO-2 too, too slow for the suite)."""

from __future__ import annotations

import math

import pytest
import ray
from ray.cluster_utils import Cluster

from tests.script_loader import load_script
from tests.test_real_width import _available_gib

# 5-12 minutes on this 2-core machine: outside the default suite (`pytest -m slow` runs it)
pytestmark = [pytest.mark.system, pytest.mark.slow]


@pytest.fixture
def two_nodes():
    """A head and a worker node, 3 logical CPUs each; the driver connected to the head."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 3})
    try:
        cluster.add_node(num_cpus=3)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        yield
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_sd35_zero3_on_two_nodes_checkpoints_and_resumes(real_width, two_nodes, tmp_path):
    # Only `pytest -m slow` runs this, i.e. someone asked for the proof: too little memory is a failure
    # that says so, not a skip that reads as done.
    if _available_gib() < 8:
        pytest.fail(f"three SD3.5 real-width actors need ~8 GiB free, {_available_gib():.1f} available")
    script = load_script("scripts/multinode_real_width.py")
    case = script.run_case("sd35", real_width("sd35"), str(tmp_path / "run"), 3, [])
    assert len(set(case["learner_nodes"])) == 2
    assert case["optimizer_shards"] == ["optimizer_rank0.json", "optimizer_rank0.safetensors",
                                        "optimizer_rank1.json", "optimizer_rank1.safetensors"]
    assert case["metrics"]["learner/optimizer_steps"] >= 1 and math.isfinite(case["metrics"]["policy/loss"])
    # the resumed iteration's first minibatch is on-policy (0.9994 while ZeRO-3 replaced F.linear)
    # (bf16 numerics leave ~1e-5: FLUX's resumed ratio was 1.0000089), well inside a 1e-4 clip range
    assert case["metrics"]["learner/first_minibatch_ratio_mean"] == pytest.approx(1.0, abs=2e-5)
