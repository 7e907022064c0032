"""The DeepSpeed engine behind a learner rank: process group, config and optimizer.

On CPU DeepSpeed picks its CPU accelerator and we use gloo with a plain torch AdamW (DeepSpeed's own
CPU/fused Adam JIT-compile for ~95 s on 2 cores); on GPU the backend is NCCL and AdamW runs fused.
Gradient accumulation is DeepSpeed's: the caller tells `set_micro_batches` how many backward calls
the next optimizer step takes (it scales each loss by 1 / that), marks the last one explicitly
(`micro_batch_step`), and every rank must make that many (ranks with less data add zero-weight
micro-batches), so the ZeRO reductions line up. Gradients accumulate and reduce in fp32.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from common.net import (
    free_port,  # noqa: F401 (tests and benchmarks take their rendezvous port from here)
    member_address,
    pin_transport_interfaces,
    tcp_store,
)
from learner.config import LearnerConfig


@dataclass(frozen=True)
class DistInfo:
    """Where a learner rank sits in the data-parallel group."""

    rank: int
    world_size: int
    master_addr: str
    master_port: int
    local_rank: int = 0


def dist_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the learner group. The group is built here on a store whose server listens on
    `info.master_addr` only (common/net.py: DeepSpeed's env:// rendezvous would bind every interface),
    and DeepSpeed adopts it. The env:// variables stay set for what reads them (LOCAL_RANK)."""
    import deepspeed
    import torch.distributed as dist
    from deepspeed.constants import default_pg_timeout

    os.environ.update(
        MASTER_ADDR=info.master_addr,
        MASTER_PORT=str(info.master_port),
        RANK=str(info.rank),
        WORLD_SIZE=str(info.world_size),
        LOCAL_RANK=str(info.local_rank),
    )
    if device.type == "cpu" and "LOCAL_SIZE" not in os.environ:
        # DeepSpeed's TorchBackend JIT-compiles its shared-memory allreduce op on every CPU init
        # (~60 s on 2 cores) although it is only used when the launcher sets LOCAL_SIZE; marking the
        # op incompatible makes DeepSpeed skip the build and use plain gloo collectives.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not dist.is_initialized():  # a second learner in one process (tests) shares the group, as DeepSpeed did
        pin_transport_interfaces(member_address(info.master_addr), device)
        store = tcp_store(info.master_addr, info.master_port, info.world_size, info.rank == 0, default_pg_timeout)
        # DeepSpeed binds the device on CUDA when it initialises the group itself (deepspeed/comm/torch.py).
        bound = {"device_id": device} if device.type == "cuda" and info.world_size > 1 else {}
        dist.init_process_group(dist_backend(device), store=store, rank=info.rank, world_size=info.world_size,
                                timeout=default_pg_timeout, **bound)
    deepspeed.init_distributed(dist_backend=dist_backend(device), auto_mpi_discovery=False)


def deepspeed_config(cfg: LearnerConfig, world_size: int, micro_batches: int = 1) -> dict:
    """DeepSpeed JSON config for the learner section. A 'micro-batch' is one backward call."""
    return {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": micro_batches,
        "train_batch_size": micro_batches * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        # ZeRO-3 otherwise replaces torch.nn.functional.linear process-wide with its own matmul-then-add
        # (deepspeed/runtime/zero/linear.py, zero3_linear_wrap): in bf16 that rounds before the bias where
        # the rollout actors' F.linear does not, and the on-policy ratios drift past a 1e-4 clip range.
        "zero_optimization": {"stage": cfg.zero_stage, "memory_efficient_linear": False,
                              # DeepSpeed's 5e8-element default buckets cost 5 GB per rank in transients
                              # (learner.zero_bucket_elements); the memory planner counts the same terms.
                              "reduce_bucket_size": cfg.zero_bucket_elements,
                              "allgather_bucket_size": cfg.zero_bucket_elements,
                              "stage3_prefetch_bucket_size": cfg.zero_bucket_elements,
                              # ZeRO-3 steps the optimizer one sub-group of the partition at a time; its
                              # 1e9 default makes the whole partition one group, and unfused AdamW's
                              # temporaries (CPU) as large as the partition.
                              "sub_group_size": cfg.zero_bucket_elements},
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        # Accumulate over up to hundreds of micro-batches and all-reduce across ranks in fp32: bf16
        # sums lose the small per-micro-batch gradients (DeepSpeed defaults both to the model dtype).
        "data_types": {"grad_accum_dtype": "fp32"},
        "communication_data_type": "fp32",
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }


def build_optimizer(params: list[torch.nn.Parameter], cfg: LearnerConfig, device: torch.device) -> torch.optim.Optimizer:
    if not params:
        raise ValueError("the policy has no trainable parameters (check model.lora settings)")
    return torch.optim.AdamW(
        params,
        lr=cfg.learning_rate,
        betas=tuple(cfg.adam_betas),
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
        fused=device.type == "cuda",
    )


def build_engine(module: torch.nn.Module, params: list[torch.nn.Parameter], cfg: LearnerConfig, world_size: int):
    """deepspeed.initialize over `module` with only `params` trainable; returns the engine."""
    import deepspeed

    device = next(module.parameters()).device
    optimizer = build_optimizer(params, cfg, device)
    engine, *_ = deepspeed.initialize(
        model=module, model_parameters=params, optimizer=optimizer, config=deepspeed_config(cfg, world_size)
    )
    return engine


def scheduled_learning_rate(cfg: LearnerConfig, iteration: int, iterations: int | None) -> float:
    """learner.lr_schedule's rate for `iteration` (0-based) of a run of `iterations`. A function of the
    iteration alone (no scheduler state), so a resumed run continues the curve exactly."""
    if cfg.lr_schedule == "constant":
        return cfg.learning_rate
    iterations = cfg.lr_schedule_iterations or iterations
    if not iterations:
        raise ValueError(f"learner.lr_schedule={cfg.lr_schedule!r} needs the run's length: construct the "
                         "LearnerWorker with iterations=cfg.iterations")
    progress = min(max(iteration, 0) / iterations, 1.0)
    return cfg.learning_rate * (cfg.lr_final_fraction + (1 - cfg.lr_final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def lr_horizon_change(saved: LearnerConfig, saved_iterations: int, cfg: LearnerConfig, iterations: int,
                      iteration: int) -> str | None:
    """A warning for resuming at `iteration` under (`cfg`, `iterations`) a run trained under (`saved`,
    `saved_iterations`) when that moves a decaying schedule's horizon: it follows the run's `iterations`
    unless learner.lr_schedule_iterations pins it, so "2 iterations, then resume to 4" changes every rate
    from the resume point on. None when the horizon is unchanged or the rate is constant."""
    old, new = saved.lr_schedule_iterations or saved_iterations, cfg.lr_schedule_iterations or iterations
    if cfg.lr_schedule == "constant" or old == new:
        return None
    before = scheduled_learning_rate(saved, iteration, saved_iterations)
    after = scheduled_learning_rate(cfg, iteration, iterations)
    return (f"resuming at iteration {iteration} moves learner.lr_schedule={cfg.lr_schedule!r}'s horizon from {old} "
            f"to {new} iterations: the learning rate there changes from {before:.4g} to {after:.4g}, and every "
            f"later one with it. learner.lr_schedule_iterations={old} keeps the checkpoint's schedule.")


def set_learning_rate(engine, lr: float) -> None:
    """Every parameter group's rate. DeepSpeed's ZeRO and bf16 optimizers expose the wrapped torch
    optimizer's param_groups, which their step reads (DeepSpeed's own LR schedulers set them the same way)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr


@dataclass(frozen=True)
class StepOutcome:
    """What an optimizer step did: the global gradient norm before clipping (None where DeepSpeed kept
    none) and whether the weights moved (False: the norm was not finite and the step was skipped)."""

    grad_norm: float | None
    applied: bool


def micro_batch_step(engine, loss: torch.Tensor, is_last: bool) -> StepOutcome | None:
    """Backward and step one micro-batch, marking explicitly whether it ends the optimizer step; returns
    the step's outcome on its last micro-batch (else None).

    DeepSpeed otherwise decides the boundary from a global micro-step counter,
    (micro_steps + 1) % gradient_accumulation_steps == 0, which drifts as soon as two optimizer steps
    take different numbers of micro-batches (masked images, dropped zero-std groups, uneven shares):
    after a 3-micro-batch step, a 2-micro-batch step would update after its first micro-batch.

    A step whose gradient is not finite is skipped at every stage. DeepSpeed's ZeRO and bf16 optimizers
    skip it themselves (they check for overflow in fp32 too); its plain fp32 path (stage 0) clips by the
    infinite norm, which turns the gradient into NaN, and AdamW writes that into the weights and moments.
    There the gradients are dropped before the step (set to None), so AdamW leaves every parameter and
    its moments as they were, and the engine still counts the step as everywhere else."""
    engine.set_gradient_accumulation_boundary(is_last)
    engine.backward(loss)
    # DeepSpeed's ZeRO and bf16 optimizers record the norm they clip by; its plain fp32 path (stage 0)
    # clips without keeping it, and the step then frees the gradients, so measure it here first.
    plain = is_last and engine.zero_optimization_stage() == 0 and not engine.bfloat16_enabled()
    own = unsharded_grad_norm(engine) if plain else None
    if own is not None and not math.isfinite(own):
        _step_without_gradients(engine)
    else:
        engine.step()
    if not is_last:
        return None
    norm = engine.get_global_grad_norm() if own is None else own
    norm = None if norm is None else float(norm)
    applied = engine.was_step_applied() if own is None else math.isfinite(own)
    return StepOutcome(norm, bool(applied))


def _step_without_gradients(engine) -> None:
    """The stage-0 skip: drop the gradients, so torch's AdamW passes over every parameter (weights,
    moments and step counts untouched), and let the engine close the step as usual. Its fp32 clipping
    is bypassed for this one call: with no gradient to clip, DeepSpeed's clip_grad_norm_ indexes an
    empty list."""
    engine.optimizer.zero_grad(set_to_none=True)
    engine.clip_fp32_gradients = lambda: None  # an instance attribute shadows the method for this call
    try:
        engine.step()
    finally:
        del engine.clip_fp32_gradients


def unsharded_grad_norm(engine) -> float:
    """Global L2 norm of the module's gradients where every rank holds whole gradients (no ZeRO)."""
    grads = [p.grad.float().norm() for p in engine.module.parameters() if p.grad is not None]
    return float(torch.linalg.vector_norm(torch.stack(grads))) if grads else 0.0


def set_micro_batches(engine, micro_batches: int) -> None:
    """Make the next optimizer step accumulate `micro_batches` backward calls (same on every rank)."""
    if micro_batches < 1:
        raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
    if engine.gradient_accumulation_steps() != micro_batches:
        engine.set_train_batch_size(micro_batches * engine.train_micro_batch_size_per_gpu() * engine.world_size)


def optimizer_state_tensors(engine) -> list[torch.Tensor]:
    """Every tensor the engine's optimizer holds, found by walking it: the torch optimizer's moments and
    step counts, a ZeRO optimizer's buffers (fp32 master partitions, flat gradient partitions; their names
    differ by stage and precision: stage_1_and_2.py, bf16_optimizer.py) and the gradients it points at.
    Containers are followed; other objects only at the top (the ZeRO wrapper) and when they are torch
    optimizers, so the walk never wanders into the module or the process group."""
    found: list[torch.Tensor] = []
    seen: set[int] = set()

    def visit(obj, top: bool = False) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if torch.is_tensor(obj):
            found.append(obj)
            if obj.is_leaf and obj.grad is not None:
                found.append(obj.grad)
        elif isinstance(obj, torch.optim.Optimizer):
            visit(obj.state)
            visit(obj.param_groups)
        elif isinstance(obj, dict):
            for value in obj.values():
                visit(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                visit(value)
        elif top:
            for value in vars(obj).values():
                visit(value)

    visit(engine.optimizer, top=True)
    return found
