"""bf16 end to end, in-process, on CPU (bf16 on CPU is the GPU's dtype path: a bf16 input into fp32
weights fails here exactly as on a GPU): rollout, update, sync, checkpoint and resume, for LoRA and full
fine-tuning, with the presets' precision settings (model.dtype=bfloat16, learner.precision=bf16)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.config import LearnerConfig
from learner.engine import free_port
from learner.worker import LearnerWorker
from models.config import LoraSettings, ModelConfig, SamplingConfig
from rollout.worker import RolloutWorker, weights_digest
from tests.test_workers import _groups

pytestmark = pytest.mark.component


def _workers(path: str, lora: bool, beta: float, zero_stage: int = 1):
    model = ModelConfig(path=path, dtype="bfloat16", guidance_scale=2.0,
                        lora=LoraSettings(enabled=lora, rank=4, alpha=8))
    sampling = SamplingConfig(group_size=4, num_steps=3, eval_num_steps=3)
    learner_cfg = LearnerConfig(precision="bf16", zero_stage=zero_stage, micro_batch_size=4, learning_rate=1e-2,
                                beta=beta)
    learner = LearnerWorker(model, sampling, learner_cfg, rank=0, world_size=1, seed=0)
    learner.setup("127.0.0.1", free_port())
    rollout = RolloutWorker(model, sampling, torch_threads=2, precision="bf16")
    return rollout, learner


def _trainable_dtypes(policy) -> set[torch.dtype]:
    return {p.dtype for p in policy.trainable_parameters()}


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_bf16_rollout_update_sync_checkpoint(tiny_sd3_path, tmp_path, lora):
    rollout, learner = _workers(tiny_sd3_path, lora, beta=0.01)
    # The trainable weights have one dtype in the sampler and in the learner's DeepSpeed module.
    assert _trainable_dtypes(rollout.policy) == _trainable_dtypes(learner.policy) == {torch.bfloat16}
    assert {p.dtype for p in rollout.policy.transformer.parameters()} == {torch.bfloat16}
    assert rollout.policy._reference_copy is None  # a rollout actor never holds the KL reference
    assert (learner.policy._reference_copy is not None) == (not lora)  # LoRA: adapters disabled instead
    ack = rollout.load_weights(learner.export_weights(), 0)
    assert ack["digest"] == learner.weights_digest()

    metrics = learner.train(_groups(rollout), iteration=0)
    assert np.isfinite(metrics["policy/loss"]) and metrics["learner/optimizer_steps"] == 1.0
    ack = rollout.load_weights(learner.export_weights(), learner.get_version())
    assert ack["digest"] == learner.weights_digest() and ack["version"] == 1
    _groups(rollout, iteration=1)  # samples with the synced bf16 weights
    learner.save_checkpoint(str(tmp_path))
    assert (tmp_path / "trainable.safetensors").is_file()


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_bf16_resume_continues_bit_exactly(tiny_sd3_path, tmp_path, lora):
    rollout, learner = _workers(tiny_sd3_path, lora, beta=0.01)
    rollout.load_weights(learner.export_weights(), 0)
    learner.train(_groups(rollout), iteration=0)
    rollout.load_weights(learner.export_weights(), learner.get_version())
    groups = _groups(rollout, iteration=1)
    learner.save_checkpoint(str(tmp_path))
    resumed = _workers(tiny_sd3_path, lora, beta=0.01)[1]
    assert resumed.load_checkpoint(str(tmp_path)) == 1
    assert resumed.weights_digest() == learner.weights_digest()
    learner.train(groups, iteration=1)
    resumed.train(groups, iteration=1)
    assert resumed.weights_digest() == learner.weights_digest()  # fp32 master weights and Adam moments restored


def test_full_finetuning_without_kl_keeps_no_reference_copy(tiny_sd3_path):
    _, learner = _workers(tiny_sd3_path, lora=False, beta=0.0)
    assert learner.policy._reference_copy is None
    with pytest.raises(RuntimeError, match="reference_copy=True"):
        policy = learner.policy  # transformer only: it conditions on given embeddings, never encodes
        policy.velocity(torch.zeros(policy.latent_shape(1)), 0.5, policy.blank_conditioning(), reference=True)


def test_bf16_lora_export_digest_matches_a_bf16_copy(tiny_sd3_path):
    """The learner exports float32 arrays (numpy has no bf16); the rollout actor's bf16 copy of the
    same values has the same digest."""
    rollout, learner = _workers(tiny_sd3_path, lora=True, beta=0.0)
    exported = learner.export_weights()
    rollout.load_weights(exported, 0)
    own = rollout.policy.export_trainable()
    assert {t.dtype for t in own.values()} == {torch.bfloat16}
    assert weights_digest(own) == weights_digest({k: torch.from_numpy(v) for k, v in exported.items()})
