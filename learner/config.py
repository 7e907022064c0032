"""Config section owned by learner/: the GRPO objective, the optimiser and the DeepSpeed engine."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LearnerConfig(BaseModel):
    """How the learner turns advantages into a policy update."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    loss: str = Field("grpo_clip", description="Policy loss, by registered name (learner/losses.py).")
    clip_range: float = Field(1e-4, gt=0, description="PPO clip range eps on the per-step ratio (Flow-GRPO: 1e-4).")
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference (base) policy; 0 disables the KL.")
    kl_form: Literal["flow_grpo", "exact"] = Field(
        "flow_grpo",
        description="KL scale: 'flow_grpo' divides by 2 s^2 as the Flow-GRPO code does (its published beta was "
        "tuned so); 'exact' divides by the step's variance 2 s^2 (-dt).",
    )
    std_mode: Literal["group", "global"] = Field(
        "group", description="Advantage std: per reward group, or over the whole batch (Flow-GRPO's global_std)."
    )
    adv_clip: float = Field(5.0, gt=0, description="Advantages are clipped to +-adv_clip.")
    drop_zero_std_groups: bool = Field(
        False, description="Skip the transitions of groups whose rewards are all equal (their advantage is 0)."
    )
    learning_rate: float = Field(3e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping by global norm.")
    optimizer_steps_per_iteration: int = Field(
        1, ge=1, description="The iteration's samples are split into this many minibatches, one optimizer step each."
    )
    num_inner_epochs: int = Field(1, ge=1, description="Passes over the iteration's samples.")
    micro_batch_size: int = Field(
        8, ge=1, description="Samples per forward/backward on one learner rank (speed only; gradients accumulate)."
    )
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3).")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Training precision of the trainable weights' compute (fp32 on CPU)."
    )
    recompute_old_log_probs: bool = Field(
        False,
        description="The learner recomputes every transition's old log-prob under its current weights before its "
        "first step, instead of trusting the sampler's (when learner/first_minibatch_ratio_* drift from 1, 0).",
    )
    ema_decay: float | None = Field(
        None, gt=0, lt=1, description="Keep an EMA of the trainable weights for evaluation (None disables)."
    )

    @model_validator(mode="after")
    def _check(self) -> LearnerConfig:
        from learner.losses import LOSSES

        if self.loss not in LOSSES:
            raise ValueError(f"learner.loss {self.loss!r} is not registered; choose one of {sorted(LOSSES)}")
        if self.precision != "fp32" and self.zero_stage == 0:
            # Gradients accumulate and reduce in fp32 (learner/engine.py); DeepSpeed offers that with
            # bf16/fp16 weights only through a ZeRO optimizer (stage 0 would step the bf16 weights
            # themselves, with no fp32 master copy).
            raise ValueError(
                f"learner.precision={self.precision!r} needs learner.zero_stage >= 1 (fp32 master weights and "
                "fp32 gradient accumulation live in DeepSpeed's ZeRO optimizers); set learner.zero_stage=1"
            )
        return self
