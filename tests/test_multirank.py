"""Two DeepSpeed learner ranks (gloo, CPU) with ZeRO 1, 2 and 3 on a real local Ray: train, sync,
checkpoint, and resume bit-exactly. Under ZeRO-3 every rank must take part in gathering the weights
(a rank-0-only gather deadlocked); with ZeRO-1/2 each rank restores its own optimizer partition
(loading one dict where DeepSpeed indexes a per-rank list failed with a KeyError)."""

from __future__ import annotations

import json
import shutil

import pytest
import ray
from safetensors.torch import load_file

from cluster.stages import mean_over_ranks
from cluster.trainer import Trainer
from common.weight_buckets import weights_digest
from tests.test_system import _config, _digest

pytestmark = pytest.mark.system


def _policy_metrics(out, iteration: int) -> dict:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    row = next(r for r in rows if r["iteration"] == iteration)
    return {k: v for k, v in row.items() if k.startswith(("policy/", "reward/", "advantage/"))}


@pytest.mark.parametrize(("zero_stage", "backend"), [(1, "object_store"), (2, "collective"), (3, "collective")])
def test_two_ranks_train_sync_checkpoint_and_resume_bit_exactly(local_ray, tiny_sd3_path, tmp_path, zero_stage, backend):
    def cfg(out):
        return _config(tiny_sd3_path, out, **{"learner.zero_stage": zero_stage, "cluster.sync_backend": backend,
                                              "iterations": 2, "logging.checkpoint_every": 1})

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    with Trainer(cfg(straight)) as trainer:
        trainer.train()
        final = load_file(straight / "checkpoints" / "iter_000002" / "trainable.safetensors")
        # the last sync gave the rollout actor exactly the checkpointed weights
        assert _digest(trainer.rollouts[0]) == weights_digest(final)
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "iter_000002")  # as if the run had stopped after iteration 1
    with Trainer(cfg(resumed), resume=True) as trainer:
        assert trainer.iteration == 1
        trainer.train()
    a_dir, b_dir = straight / "checkpoints" / "iter_000002", resumed / "checkpoints" / "iter_000002"
    for name in ("trainable.safetensors", "optimizer_rank0.safetensors", "optimizer_rank1.safetensors"):
        a, b = load_file(a_dir / name), load_file(b_dir / name)
        assert a.keys() == b.keys(), name
        assert all((a[k] == b[k]).all() for k in a), f"{name}: the resumed run differs from the uninterrupted one"
    assert _policy_metrics(resumed, 1) == _policy_metrics(straight, 1)
    assert [json.loads(x)["iteration"] for x in (resumed / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert ray.is_initialized()


def test_zero3_bf16_first_minibatch_is_on_policy(local_ray, tiny_sd3_path, tmp_path):
    """ZeRO-3 and the rollout actors compute the same bf16 forward: the first minibatch of an iteration
    is on-policy, so its ratios are 1. DeepSpeed's ZeRO-3 replaces torch.nn.functional.linear in the
    learner's process by default (zero_optimization.memory_efficient_linear), a matmul rounded to bf16
    before the bias is added; against the rollout actors' fused F.linear that moved the ratios by up to
    6e-4 at SD3.5's width, beyond the SD3.5/FLUX presets' clip range of 1e-4."""
    cfg = _config(tiny_sd3_path, tmp_path, **{"learner.zero_stage": 3, "model.dtype": "bfloat16",
                                              "learner.precision": "bf16", "iterations": 1})
    with Trainer(cfg) as trainer:
        metrics = trainer.train()
    assert metrics["learner/first_minibatch_ratio_mean"] == 1.0
    assert metrics["learner/first_minibatch_ratio_std"] == 0.0


@pytest.mark.unit
def test_metrics_of_every_rank_count_even_when_rank_0_trained_on_padding_only():
    # Rank 0's share was all zero-weight padding (a small iteration on two ranks): it reports no policy
    # metrics, and rank 1's ratio must still reach the log (the real-width two-node runs lost it).
    per_rank = [{"learner/optimizer_steps": 2.0}, {"learner/optimizer_steps": 2.0, "policy/ratio_mean": 1.0}]
    assert mean_over_ranks(per_rank) == {"learner/optimizer_steps": 2.0, "policy/ratio_mean": 1.0}
    assert mean_over_ranks([{"a": 1.0}, {"a": 3.0}]) == {"a": 2.0}

