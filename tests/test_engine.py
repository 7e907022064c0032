"""learner/engine.py: a real DeepSpeed engine (one gloo rank, CPU) accumulating micro-batches."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from learner.config import LearnerConfig
from learner.engine import (
    DistInfo,
    build_engine,
    free_port,
    init_distributed,
    micro_batch_step,
    set_micro_batches,
)

pytestmark = pytest.mark.component


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    import os

    import torch.distributed as td

    os.environ["TORCH_EXTENSIONS_DIR"] = str(tmp_path_factory.mktemp("torch_ext"))
    if not td.is_initialized():
        init_distributed(DistInfo(0, 1, "127.0.0.1", free_port()), torch.device("cpu"))
    yield
    # the default group stays for later modules of this session; DeepSpeed keeps global state anyway


@pytest.mark.parametrize("zero_stage", [0, 2])
def test_accumulated_step_equals_adamw_on_mean_gradient(dist, zero_stage):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    ref = copy.deepcopy(net)
    cfg = LearnerConfig(zero_stage=zero_stage, learning_rate=1e-2, max_grad_norm=1e6, weight_decay=0.0)
    engine = build_engine(net, list(net.parameters()), cfg, world_size=1)
    set_micro_batches(engine, 3)
    xs = [torch.randn(5, 4) for _ in range(3)]
    outcomes = [micro_batch_step(engine, engine.module(x).pow(2).mean(), is_last=i == 2) for i, x in enumerate(xs)]
    assert engine.global_steps == 1
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    sum(ref(x).pow(2).mean() for x in xs).div(3).backward()
    # the step's gradient norm is reported at every stage (DeepSpeed's stage 0 keeps none of its own)
    expected = torch.linalg.vector_norm(torch.stack([q.grad.norm() for q in ref.parameters()]))
    assert outcomes[:2] == [None, None] and outcomes[2].grad_norm == pytest.approx(float(expected), rel=1e-5)
    assert outcomes[2].applied
    opt.step()
    for p, q in zip(engine.module.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_a_step_with_a_non_finite_gradient_is_skipped(dist, zero_stage):
    """A diverging policy's gradient reaches inf. Stage 0 used to clip by the infinite norm (NaN gradients)
    and AdamW wrote NaN into the weights; at every stage the step must now leave the weights and Adam's
    moments as they were, report applied=False, and the next finite step must equal AdamW that never saw
    the bad one."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    ref = copy.deepcopy(net)
    cfg = LearnerConfig(zero_stage=zero_stage, learning_rate=1e-2, max_grad_norm=1.0, weight_decay=1e-2)
    engine = build_engine(net, list(net.parameters()), cfg, world_size=1)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=1e-2)
    good = [torch.randn(5, 4) for _ in range(2)]
    bad = torch.full((5, 4), float("inf"))
    set_micro_batches(engine, 1)

    def ref_step(x):
        opt.zero_grad()
        ref(x).pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()

    assert micro_batch_step(engine, engine.module(good[0]).pow(2).mean(), is_last=True).applied
    ref_step(good[0])
    before = [p.detach().clone() for p in engine.module.parameters()]
    skipped = micro_batch_step(engine, engine.module(bad).pow(2).mean(), is_last=True)
    assert not skipped.applied
    assert skipped.grad_norm is None or not math.isfinite(skipped.grad_norm)
    for p, q in zip(engine.module.parameters(), before, strict=True):
        torch.testing.assert_close(p.detach(), q)
    assert micro_batch_step(engine, engine.module(good[1]).pow(2).mean(), is_last=True).applied
    ref_step(good[1])
    for p, q in zip(engine.module.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)


def test_micro_batches_must_be_positive(dist):
    net = torch.nn.Linear(2, 2)
    engine = build_engine(net, list(net.parameters()), LearnerConfig(), world_size=1)
    with pytest.raises(ValueError, match="micro_batches must be >= 1"):
        set_micro_batches(engine, 0)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_engine(net, [], LearnerConfig(), world_size=1)


@pytest.mark.parametrize("zero_stage", [0, 1, 2])
def test_uneven_micro_batch_counts_step_at_each_boundary(dist, zero_stage):
    """Optimizer steps of 3, then 2, then 4 micro-batches (dropped groups, masked images, uneven shares):
    each step must equal AdamW on that step's mean gradient. DeepSpeed's own boundary is a global
    micro-step counter modulo the accumulation steps, which fires after the first micro-batch of the
    2-micro-batch step."""
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    ref = copy.deepcopy(net)
    cfg = LearnerConfig(zero_stage=zero_stage, learning_rate=1e-2, max_grad_norm=1e6, weight_decay=0.0)
    engine = build_engine(net, list(net.parameters()), cfg, world_size=1)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    for count in (3, 2, 4):
        xs = [torch.randn(5, 4) for _ in range(count)]
        set_micro_batches(engine, count)
        for i, x in enumerate(xs):
            micro_batch_step(engine, engine.module(x).pow(2).mean(), is_last=i == count - 1)
        opt.zero_grad()
        sum(ref(x).pow(2).mean() for x in xs).div(count).backward()
        opt.step()
        for p, q in zip(engine.module.parameters(), ref.parameters(), strict=True):
            torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-5, atol=1e-6)
    assert engine.global_steps == 3


@pytest.mark.parametrize("zero_stage", [1, 2])
def test_bf16_gradients_accumulate_and_reduce_in_fp32(dist, zero_stage):
    net = torch.nn.Linear(4, 3)
    cfg = LearnerConfig(zero_stage=zero_stage, precision="bf16")
    engine = build_engine(net, list(net.parameters()), cfg, world_size=1)
    assert engine.get_data_types() == (torch.bfloat16, torch.float32)
    assert engine.communication_data_type == torch.float32
    assert next(engine.module.parameters()).dtype == torch.bfloat16
    if zero_stage == 1:
        from deepspeed.runtime.bf16_optimizer import BF16_Optimizer

        assert isinstance(engine.optimizer, BF16_Optimizer)  # fp32 master weights and fp32 gradient buffers
        assert all(g.dtype == torch.float32 for g in engine.optimizer.fp32_groups_gradients_flat)
    else:
        assert engine.optimizer.gradient_accumulation_dtype == torch.float32
    set_micro_batches(engine, 2)
    for i in range(2):
        x = torch.randn(5, 4, dtype=torch.bfloat16)
        micro_batch_step(engine, engine.module(x).float().pow(2).mean(), is_last=i == 1)
    assert engine.global_steps == 1


def test_bf16_without_a_zero_optimizer_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"learner.zero_stage >= 1"):
        LearnerConfig(precision="bf16", zero_stage=0)
