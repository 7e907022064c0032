"""What a learner rank writes and restores (one gloo rank, in-process, tiny random SD3): checkpoints
keep the weights' own dtype and restore DeepSpeed's fp32 master partitions exactly; ZeRO-3 gathers the
weights one submodule at a time."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from learner.config import LearnerConfig
from learner.engine import free_port
from learner.worker import LearnerWorker
from models.config import LoraSettings, ModelConfig, SamplingConfig

pytestmark = pytest.mark.component


def _learner(path: str, lora: bool = True, **learner) -> LearnerWorker:
    model = ModelConfig(path=path, resolution=32, lora=LoraSettings(enabled=lora, rank=4, alpha=8))
    worker = LearnerWorker(model, SamplingConfig(group_size=4, num_steps=4), LearnerConfig(**learner))
    worker.setup("127.0.0.1", free_port())
    return worker


def test_bf16_checkpoint_is_bf16_and_restores_the_fp32_masters(tiny_sd3_path, tmp_path):
    learner = _learner(tiny_sd3_path, precision="bf16", zero_stage=2)
    assert {p.dtype for p in learner.policy.trainable_parameters()} == {torch.bfloat16}
    masters = learner.engine.optimizer.single_partition_of_fp32_groups
    for m in masters:  # fp32 masters carry bits the bf16 weights cannot hold, as after real steps
        m.data.add_(torch.rand_like(m) * 1e-3)
    saved = [m.detach().clone() for m in masters]
    learner.save_checkpoint(str(tmp_path))
    weights = load_file(tmp_path / "trainable.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}  # no fp32 copy of bf16 weights
    for m in masters:
        m.data.zero_()
    learner.load_checkpoint(str(tmp_path))
    for m, s in zip(learner.engine.optimizer.single_partition_of_fp32_groups, saved, strict=True):
        assert torch.equal(m, s), "fp32 masters were rebuilt from the bf16 weights instead of the checkpoint"


def test_zero3_gathers_one_submodule_at_a_time(tiny_sd3_path, monkeypatch):
    import deepspeed

    learner = _learner(tiny_sd3_path, lora=False, zero_stage=3)
    total = sum(p.ds_numel for p in learner.policy.transformer.parameters())
    gathered: list[int] = []
    real = deepspeed.zero.GatheredParameters

    def counting(params, *args, **kwargs):
        gathered.append(sum(p.ds_numel for p in params))
        return real(params, *args, **kwargs)

    monkeypatch.setattr(deepspeed.zero, "GatheredParameters", counting)
    state = learner.export_weights()
    assert sum(gathered) == total and len(gathered) > 1
    assert max(gathered) < total / 2  # never the whole model at once
    assert sum(v.size for v in state.values()) >= total and all(v.size for v in state.values())
