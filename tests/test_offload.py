"""Colocation with offload (cluster.colocate_offload, common/offload.py): the idle side's tensors leave the
process (storages emptied, resident memory given back) and come back bit for bit, so a run that offloads
trains exactly as one that does not (a real DeepSpeed engine, one gloo rank, tiny random SD3, in-process)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.offload import Offloader
from learner.config import LearnerConfig
from learner.engine import free_port, optimizer_state_tensors
from learner.worker import LearnerWorker
from models.config import LoraSettings, ModelConfig, SamplingConfig
from rollout.worker import RolloutWorker, weights_digest
from tests.test_workers import _groups

pytestmark = pytest.mark.component


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def test_offload_empties_every_storage_gives_the_memory_back_and_restores_bits():
    big = torch.randn(16 * 2**20)  # 64 MB: what offloading must give back to the OS
    flat = torch.randn(1000).bfloat16()
    view = flat[10:20]  # a view (DeepSpeed's parameters are views into its flat buffers): one storage
    loaded = torch.from_numpy(np.arange(12, dtype=np.float32))  # memory torch does not own, as from_pretrained's
    kept = torch.randn(5)
    before = {name: t.clone() for name, t in [("big", big), ("flat", flat), ("view", view), ("loaded", loaded), ("kept", kept)]}
    offloader = Offloader(torch.device("cpu"), "test")
    rss = _rss_bytes()
    freed = offloader.offload([big, flat, view, loaded, kept], keep=[kept])
    assert freed == big.nbytes + flat.nbytes + loaded.nbytes
    assert all(t.untyped_storage().nbytes() == 0 for t in (big, flat, view, loaded))
    assert kept.untyped_storage().nbytes() == 20
    assert rss - _rss_bytes() > 0.9 * big.nbytes, "the freed storage is still resident"
    assert offloader.reload() == freed and not offloader.offloaded
    for name, t in [("big", big), ("flat", flat), ("view", view), ("loaded", loaded), ("kept", kept)]:
        assert torch.equal(t, before[name]), name
    view.add_(1)  # still a view of the restored storage
    assert torch.equal(flat[10:20], view)
    offloader.close()


def _resident_bytes(tensors) -> int:
    """Bytes the tensors' distinct storages hold (an int: a failed assert must not print freed tensors)."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}.values())


def _setup(path: str, zero_stage: int, precision: str):
    model = ModelConfig(path=path, resolution=32, guidance_scale=2.0, lora=LoraSettings(rank=4, alpha=8),
                        dtype="bfloat16" if precision == "bf16" else "float32")
    sampling = SamplingConfig(group_size=4, num_steps=2)
    learner = LearnerWorker(model, sampling, LearnerConfig(micro_batch_size=8, learning_rate=1e-2, beta=0.0,
                                                           zero_stage=zero_stage, precision=precision))
    learner.setup("127.0.0.1", free_port())
    rollout = RolloutWorker(model, sampling, torch_threads=2, precision=precision)
    rollout.load_weights(learner.export_weights(), 0)
    return learner, rollout


def _run(path: str, zero_stage: int, precision: str, offload: bool):
    """Two iterations in the trainer's colocated order: sample, [offload rollout], train, [offload learner,
    reload rollout], sync. Returns what must not depend on offloading."""
    learner, rollout = _setup(path, zero_stage, precision)
    images, metrics = [], []
    for it in range(2):
        groups = _groups(rollout, it)
        images += [g.rollout.final_latents for g in groups]
        if offload:
            assert rollout.offload() > 0
            learner.reload()
            assert _resident_bytes(rollout.policy.tensors()) == 0, "rollout weights still resident"
        metrics.append({k: v for k, v in learner.train(groups, it).items() if k != "learner/seconds"})
        if offload:
            assert learner.offload() > 0 and rollout.reload() > 0
            trainable = learner.policy.trainable_parameters()
            kept = {p.untyped_storage().data_ptr() for p in trainable}
            idle = [t for t in [*learner.policy.tensors(), *optimizer_state_tensors(learner.engine)]
                    if t.device.type == "cpu" and t.untyped_storage().data_ptr() not in kept]
            # The frozen LoRA base (the learner's only frozen network: no text encoders, no VAE) and the
            # optimizer state. Ints only in the asserts: pytest would print the freed tensors.
            idle_count, frozen = len(idle), len(learner.policy.tensors()) - len(trainable)
            assert idle_count > frozen > 0 and _resident_bytes(idle) == 0, "learner state still resident"
            assert _resident_bytes(trainable) == sum(p.nbytes for p in trainable)  # the sync reads them next
        rollout.load_weights(learner.export_weights(), learner.version)
    learner.reload()
    state = [t.clone() for t in optimizer_state_tensors(learner.engine) if t.device.type == "cpu"]
    return images, metrics, weights_digest(rollout.weights()), weights_digest(rollout.policy.transformer.state_dict()), state


@pytest.mark.parametrize(("zero_stage", "precision"), [(1, "bf16"), (2, "fp32")])
def test_offloading_trains_bit_identically(tiny_sd3_path, zero_stage, precision):
    plain = _run(tiny_sd3_path, zero_stage, precision, offload=False)
    offloaded = _run(tiny_sd3_path, zero_stage, precision, offload=True)
    for a, b in zip(plain[0], offloaded[0], strict=True):
        assert torch.equal(a, b)
    assert plain[1] == offloaded[1]
    assert plain[2] == offloaded[2] and plain[3] == offloaded[3]
    assert len(plain[4]) == len(offloaded[4]) > 0
    for a, b in zip(plain[4], offloaded[4], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("overrides", [[], ["cluster.colocate=true", "cluster.async_mode=true"],
                                       ["cluster.colocate=true", "learner.zero_stage=3"]])
def test_offloading_needs_colocated_sides_that_take_turns(overrides):
    from cluster.config import ConfigError, load_config
    from tests.tiny_models import FLOWGRPO

    with pytest.raises(ConfigError, match="cluster.colocate_offload needs cluster.colocate=true, cluster.async_mode=false"):
        load_config(FLOWGRPO, ["cluster.colocate_offload=true", *overrides])
    load_config(FLOWGRPO, ["cluster.colocate_offload=true", "cluster.colocate=true", "cluster.async_mode=false"])
