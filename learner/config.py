"""Config section owned by learner/: the GRPO objective, the optimiser and the DeepSpeed engine."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class LearnerConfig(BaseModel):
    """How the learner turns advantages into a policy update."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    loss: str = Field("grpo_clip", description="Policy loss, by registered name (learner/losses.py).")
    clip_range: float = Field(1e-4, gt=0, description="PPO clip range eps on the per-step ratio (Flow-GRPO: 1e-4).")
    clip_range_high: float | None = Field(
        None,
        gt=0,
        description="Upper clip range: the ratio is clipped to [1 - clip_range, 1 + clip_range_high] (an asymmetric, "
        "'clip-higher' range); null = clip_range, the symmetric range of the papers' code.",
    )
    beta: float = Field(0.04, ge=0, description="KL coefficient to the reference (base) policy; 0 disables the KL.")
    kl_form: Literal["flow_grpo", "exact"] = Field(
        "flow_grpo",
        description="KL scale: 'flow_grpo' divides by 2 s^2 as the Flow-GRPO code does (its published beta was "
        "tuned so); 'exact' divides by the step's variance 2 s^2 (-dt).",
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
    learning_rate: float = Field(3e-4, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping by global norm.")
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
        from learner.losses import LOSSES

        if self.loss not in LOSSES:
            raise ValueError(f"learner.loss {self.loss!r} is not registered; choose one of {sorted(LOSSES)}")
        return self
