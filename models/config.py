"""Config sections owned by rollout/: the policy model and the sampling strategy.

cluster/config.py composes these into the experiment config; workers import only this module.
Every field has a description: `python launch.py --help-config` prints them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.families import FAMILIES

# Prompts whose embeddings a policy keeps (models/policy.py, LRU); the memory planner counts them.
PROMPT_CACHE_SIZE = 1024


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraSettings(_Section):
    """LoRA adapters on the transformer (through peft)."""

    enabled: bool = Field(True, description="Train LoRA adapters; false means full fine-tuning of the transformer.")
    rank: int = Field(32, ge=1, description="LoRA rank r.")
    alpha: float = Field(64.0, gt=0, description="LoRA alpha (scale = alpha / rank).")
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"],
        description="Module names (peft target_modules) that get adapters. The default is Flow-GRPO's SD3 list: "
        "the image stream's attention (to_*) and the text stream's (add_*, to_add_out), through which "
        "the prompt steers composition.",
    )
    init: Literal["gaussian", "default"] = Field(
        "gaussian", description="peft init_lora_weights: 'gaussian' (Flow-GRPO) or peft's default."
    )


class ModelConfig(_Section):
    """The policy: a diffusers pipeline loaded with from_pretrained."""

    path: str = Field(
        "assets/models/shapes-sd3-tiny",
        description="Local folder or hub id of a diffusers pipeline (SD3/SD3.5 or FLUX.1). Relative "
        "paths are resolved against the repository root.",
    )
    family: str = Field(
        "sd3", description="Pipeline family, by its entry in the family table (models/families.py): 'sd3' "
        "(StableDiffusion3Pipeline) or 'flux' (FluxPipeline).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype of the frozen parts; the SDE math always runs in float32."
    )
    resolution: int = Field(32, ge=8, description="Image height and width in pixels.")
    guidance_scale: float = Field(
        4.5, ge=0.0, description="Classifier-free guidance scale of rollouts and training (1 disables CFG)."
    )
    eval_guidance_scale: float | None = Field(
        None,
        ge=0.0,
        description="Guidance scale of evaluation sampling; null = guidance_scale (Flow-GRPO's "
        "sample.eval_guidance_scale, separate from the training one).",
    )
    negative_prompt: str = Field("", description="Negative prompt for CFG.")
    max_sequence_length: int = Field(
        0,
        ge=0,
        description="T5 sequence length for prompt encoding. 0 only for an SD3 pipeline without T5 (the "
        "shapes model): SD3 otherwise pads the prompt with this many zero tokens, which the transformer "
        "attends to at a cost and which must match what the model was trained with.",
    )
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA settings.")
    gradient_checkpointing: bool = Field(False, description="Enable gradient checkpointing on the transformer.")

    @model_validator(mode="after")
    def _check_family(self) -> ModelConfig:
        if self.family not in FAMILIES:
            raise ValueError(f"model.family {self.family!r} is not registered; choose one of {sorted(FAMILIES)}")
        return self


SdeKind = Literal["flow_grpo", "dance", "cps"]
StrategyName = Literal["flow_grpo", "flow_grpo_fast", "dance_grpo", "mix_grpo", "g2rpo", "forward_process"]


class SamplingConfig(_Section):
    """How rollouts are sampled: the strategy and its step schedule (rollout/strategies)."""

    strategy: StrategyName = Field("flow_grpo", description="Sampling strategy, by registered name.")
    sde_kind: SdeKind = Field("flow_grpo", description="SDE step: 'flow_grpo' (Eq. 9), 'dance' (constant eta) or 'cps'.")
    noise_level: float = Field(0.7, ge=0.0, description="SDE noise level: a for flow_grpo/cps, eta for dance.")
    log_prob_form: Literal["gaussian", "squared_error"] = Field(
        "gaussian",
        description="Log-prob of a step (models/sde.py): 'gaussian' = the full Gaussian density; 'squared_error' = "
        "-mean((x - mean)^2), the Flow-GRPO code's CPS log-prob with constants removed (its log-ratio is the "
        "Gaussian one times 2 std^2, so learner.clip_range must be set for it: 1e-5 in Flow-GRPO's CPS configs).",
    )
    group_size: int = Field(8, ge=2, description="G: images sampled per prompt (one group).")
    num_steps: int = Field(10, ge=1, description="T_train: denoising steps while sampling rollouts.")
    eval_num_steps: int = Field(40, ge=1, description="T_eval: ODE steps for evaluation (denoising reduction).")
    shift: float = Field(3.0, gt=0, description="Timestep shift of the sigma schedule (SD3 uses 3).")
    sigma_schedule: Literal["linear", "scheduler"] = Field(
        "linear",
        description="Sigma grid of training and evaluation sampling (models/schedule.py): 'linear' = "
        "shift(linspace(1, 0, T + 1)), as DanceGRPO, MixGRPO and G2RPO build it; 'scheduler' = diffusers' "
        "FlowMatchEulerDiscreteScheduler.set_timesteps(T) grid, shift(linspace(1, shift(1e-3), T)) + [0], "
        "which Flow-GRPO samples on.",
    )
    solver: Literal["ode", "dpm", "sde"] = Field(
        "ode",
        description="forward_process: the sampler of the final images: 'ode' (Euler), 'dpm' (DPM-Solver++(2M), "
        "DiffusionNFT's default) or 'sde' (sampling.sde_kind at every step, for exploration).",
    )
    shift_mode: Literal["static", "resolution"] = Field(
        "static",
        description="'static': the fixed `shift` (SD3.5, and the FLUX papers' scripts: --shift 3). 'resolution': "
        "FluxPipeline's shift, which grows with the image token count (mu from the model's scheduler config; "
        "`shift` is then unused).",
    )
    timestep_fraction: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="flow_grpo: the first int(num_steps * fraction) steps are trained; dance_grpo: "
        "int((num_steps - 1) * fraction) steps drawn at random per sample from the first num_steps - 1 "
        "(DanceGRPO never trains the last step).",
    )
    same_latent: bool | None = Field(
        None,
        description="One initial noise shared by the whole group; null = the strategy's paper default "
        "(flow_grpo, flow_grpo_fast: false; dance_grpo, mix_grpo: true). g2rpo always shares (one anchor).",
    )
    window_size: int = Field(2, ge=1, description="flow_grpo_fast / mix_grpo: SDE window size w (steps).")
    window_range: tuple[int, int] = Field(
        (0, 5),
        description="flow_grpo_fast: the steps [lo, hi) the SDE window must lie in; its start is drawn uniformly "
        "from [lo, hi - window_size] (Flow-GRPO's sde_window_range).",
    )
    window_stride: int = Field(1, ge=1, description="mix_grpo: window moves by this many steps (s).")
    window_every: int = Field(25, ge=1, description="mix_grpo: the window moves every tau iterations.")
    window_strategy: Literal["progressive", "random", "decay"] = Field(
        "progressive",
        description="mix_grpo: how the window moves (MixGRPO's sample_strategy): 'progressive' by the stride every "
        "tau iterations; 'random' a uniform start in [0, T - 2 - w] each iteration; 'decay' progressive, staying "
        "max(tau_min, int(tau (1 - p) + tau_min p)) iterations at position l, p = l / (T - 2).",
    )
    window_every_min: int | None = Field(
        None, ge=1, description="mix_grpo decay: tau_min, the fewest iterations at a position; null = max(1, tau // 4)."
    )
    flash: bool = Field(False, description="mix_grpo: DPM-Solver++(2M) on a compressed grid after the window.")
    flash_compress_ratio: float = Field(
        0.4,
        gt=0.0,
        le=1.0,
        description="mix_grpo flash: the n steps after the window are re-interpolated onto int(max((n + 1) * "
        "ratio, 1)) points, at least one DPM-Solver++(2M) step (MixGRPO's dpm_post_compress_ratio).",
    )
    g2rpo_steps: list[int] = Field(
        default_factory=lambda: [0, 1, 2, 3], description="g2rpo: M, the step indices that get one SDE branch step."
    )
    g2rpo_granularities: list[int] = Field(
        default_factory=lambda: [1, 2], description="g2rpo: Lambda, ODE strides after the branch step."
    )

    @model_validator(mode="after")
    def _check(self) -> SamplingConfig:
        trainable = {"flow_grpo": self.num_steps, "dance_grpo": self.num_steps - 1}.get(self.strategy)
        if trainable is not None and int(trainable * self.timestep_fraction) < 1:
            raise ValueError(
                f"sampling.timestep_fraction ({self.timestep_fraction}) trains int({trainable} * fraction) = 0 "
                f"of the {trainable} trainable steps: raise it to at least 1 / {trainable}"
            )
        if self.strategy == "dance_grpo" and self.sde_kind != "dance":
            raise ValueError(
                f"sampling.sde_kind must be 'dance' for the dance_grpo strategy (got {self.sde_kind!r}); "
                "DanceGRPO's SDE has a constant diffusion eta = sampling.noise_level (0.3 in the paper)"
            )
        if self.strategy == "g2rpo":
            if not self.g2rpo_steps:
                raise ValueError("sampling.g2rpo_steps (M) is empty: list at least one step index")
            if len(set(self.g2rpo_steps)) != len(self.g2rpo_steps):
                raise ValueError(f"sampling.g2rpo_steps (M) has repeated steps: {self.g2rpo_steps}")
            if not self.g2rpo_granularities or min(self.g2rpo_granularities) < 1:
                raise ValueError("sampling.g2rpo_granularities (Lambda) must be a non-empty list of strides >= 1")
            if len(set(self.g2rpo_granularities)) != len(self.g2rpo_granularities):
                raise ValueError(
                    f"sampling.g2rpo_granularities (Lambda) has repeated strides: {self.g2rpo_granularities}"
                )
            if max(self.g2rpo_steps) >= self.num_steps - 1 or min(self.g2rpo_steps) < 0:
                raise ValueError(
                    f"sampling.g2rpo_steps must lie in [0, num_steps - 2] = [0, {self.num_steps - 2}]"
                )
        if self.strategy == "mix_grpo" and self.window_strategy == "random" and self.window_size > self.num_steps - 2:
            raise ValueError(
                f"sampling.window_size ({self.window_size}) must be <= num_steps - 2 = {self.num_steps - 2} for "
                "window_strategy 'random' (MixGRPO draws the start from [0, T - 2 - w])"
            )
        if self.strategy == "flow_grpo_fast" and self.window_size > self.num_steps:
            raise ValueError(
                f"sampling.window_size ({self.window_size}) exceeds sampling.num_steps ({self.num_steps})"
            )
        if self.strategy == "mix_grpo" and self.window_size > self.num_steps - 1:
            # MixGRPO never trains the final step to sigma = 0 (its ignore_last), so the window lives in
            # steps [0, T - 1).
            raise ValueError(
                f"sampling.window_size ({self.window_size}) must be <= num_steps - 1 = {self.num_steps - 1} "
                "for mix_grpo (the final step is never in the window)"
            )
        if self.strategy == "flow_grpo_fast":
            lo, hi = self.window_range
            if not (0 <= lo and lo + self.window_size <= hi <= self.num_steps):
                raise ValueError(
                    f"sampling.window_range {self.window_range} must hold the whole window of window_size "
                    f"{self.window_size} steps: 0 <= lo, lo + window_size <= hi <= num_steps = {self.num_steps}"
                )
        return self
