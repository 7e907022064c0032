"""Config section owned by learner/: the objective's shared settings (clip range, KL weight, advantage
normalisation), the optimiser and the DeepSpeed engine. What belongs to one algorithm lives in its unit's
section (algorithms/)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LearnerConfig(BaseModel):
    """How the learner turns advantages into a policy update."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    clip_range: float = Field(
        1e-4, gt=0, description="PPO clip range eps on the ratio: per step (Flow-GRPO: 1e-4) or, for the awm "
        "algorithm, of the per-sample flow-matching likelihoods.",
    )
    clip_range_high: float | None = Field(
        None,
        gt=0,
        description="Upper clip range: the ratio is clipped to [1 - clip_range, 1 + clip_range_high] (an asymmetric, "
        "'clip-higher' range); null = clip_range, the symmetric range of the papers' code.",
    )
    beta: float = Field(
        0.04, ge=0, description="KL coefficient to the reference (base) policy; 0 disables the KL. Forward-process "
        "losses use the velocity KL mean (v - v_ref)^2 (DiffusionNFT: 1e-4).",
    )
    std_mode: Literal["group", "global"] = Field(
        "group", description="Advantage std: per reward group, or over the whole batch (Flow-GRPO's global_std)."
    )
    adv_std: Literal["population", "unbiased"] = Field(
        "population",
        description="Std form of the advantage z-score: 'population' (np.std, Flow-GRPO's stat_tracking.py) or "
        "'unbiased' (torch.Tensor.std: DanceGRPO, MixGRPO, G2RPO).",
    )
    adv_eps: float = Field(
        1e-4, gt=0, description="Added to the advantage std: 1e-4 in Flow-GRPO, 1e-8 in DanceGRPO, MixGRPO and G2RPO."
    )
    adv_clip: float = Field(5.0, gt=0, description="Advantages are clipped to +-adv_clip.")
    drop_zero_std_groups: bool = Field(
        False,
        description="Skip the samples whose advantage is 0 because their group's rewards are all equal under every "
        "weighted reward model (Flow-GRPO's train_sd3.py filters them out of the training batch).",
    )
    learning_rate: float = Field(3e-4, gt=0, description="AdamW learning rate (the peak, under a schedule).")
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="'cosine': the rate of iteration i (0-based) is f + (1 - f) (1 + cos(pi i / N)) / 2 "
        "times learning_rate, N the run's `iterations` (or lr_schedule_iterations) and f learner.lr_final_fraction; set per iteration from "
        "the iteration number alone, so a resumed run continues the same curve.",
    )
    lr_schedule_iterations: int | None = Field(
        None, ge=1,
        description="lr_schedule's horizon N in iterations (None: the run's `iterations`). Set when the run's length "
        "is only a cap: benchmarks/compare.py stops runs at a time or NFE budget and keeps each preset's own "
        "horizon here, so the schedule is the preset's and not stretched over the cap.",
    )
    lr_final_fraction: float = Field(
        0.1, ge=0, le=1, description="lr_schedule 'cosine': where the rate ends, as a fraction of learning_rate."
    )
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping by global norm.")
    max_consecutive_skips: int = Field(
        8, ge=1,
        description="An optimizer step whose gradient norm is not finite is skipped at every ZeRO stage (weights and "
        "Adam's moments untouched; counted in learner/skipped_steps). After this many skipped in a row the run "
        "fails with an error naming the iteration: a policy that diverged, not a one-off overflow.",
    )
    optimizer_steps_per_iteration: int = Field(
        1, ge=1, description="The iteration's samples are split into this many minibatches, one optimizer step each."
    )
    optimizer_step_per: Literal["minibatch", "denoising_step"] = Field(
        "minibatch",
        description="'minibatch': optimizer_steps_per_iteration minibatches of samples, one optimizer step each "
        "(with 1: G2RPO's newest train_g2rpo_hps_clip.py, one step per iteration on the loss averaged over M); "
        "'denoising_step': one optimizer step per sampling step index, over the transitions trained there "
        "(G2RPO's earlier version: one step per branch step k).",
    )
    num_inner_epochs: int = Field(1, ge=1, description="Passes over the iteration's samples.")
    micro_batch_size: int = Field(
        8, ge=1, description="Samples per forward/backward on one learner rank (speed only; gradients accumulate)."
    )
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3).")
    zero_bucket_elements: int = Field(
        50_000_000, ge=1_000_000,
        description="Elements per DeepSpeed gradient reduce / all-gather bucket (ZeRO 1-3: reduce_bucket_size, "
        "allgather_bucket_size, stage3_prefetch_bucket_size; ZeRO-3's optimizer sub_group_size too). Each reduce holds the bucket in the weights' dtype "
        "plus two fp32 copies (the fp32 communication cast and the reduce-scatter's flat buffer): DeepSpeed's "
        "5e8 default made that 5 GB per rank on the real-width FLUX test and the kernel killed the rank. "
        "Speed-only beyond memory: larger buckets mean fewer collectives.",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Training precision of the trainable weights' compute (fp32 on CPU)."
    )
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an EMA of the trainable weights for evaluation (None disables). The decay warms up as "
        "min((1 + t) / (10 + t), ema_decay) at optimizer step t (Flow-GRPO's flow_grpo/ema.py).",
    )
    ema_update_every: int = Field(
        1, ge=1, description="The EMA is updated after optimizer steps t with (t + 1) % every == 0 (Flow-GRPO: 8)."
    )

    @model_validator(mode="after")
    def _check(self) -> LearnerConfig:
        if self.precision != "fp32" and self.zero_stage == 0:
            # Gradients accumulate and reduce in fp32 (learner/engine.py); DeepSpeed offers that with
            # bf16/fp16 weights only through a ZeRO optimizer (stage 0 would step the bf16 weights
            # themselves, with no fp32 master copy).
            raise ValueError(
                f"learner.precision={self.precision!r} needs learner.zero_stage >= 1 (fp32 master weights and "
                "fp32 gradient accumulation live in DeepSpeed's ZeRO optimizers); set learner.zero_stage=1"
            )
        return self
