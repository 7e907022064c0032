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
        "(StableDiffusion3Pipeline), 'flux' (FluxPipeline), 'qwen_image' (QwenImagePipeline), 'z_image' (ZImagePipeline), "
        "'flux2' (Flux2Pipeline: FLUX.2-dev), 'flux2_klein' (Flux2KleinPipeline: FLUX.2-klein), 'wan' (WanPipeline: Wan2.1 "
        "text-to-video, with model.num_frames).",
    )
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="Weights dtype of the frozen parts; the SDE math always runs in float32."
    )
    resolution: int = Field(32, ge=8, description="Image height and width in pixels.")
    num_frames: int = Field(
        1, ge=1, description="Frames per sample: 1 for the image families; a video family's count (Wan: 4k + 1, e.g. 33, "
        "49, 81, as its VAE compresses 4 frames into one latent frame after the first). Scorers see each video's frames "
        "through the video_<scorer> wrappers (rewards/video.py, docs/video.md).",
    )
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
    allow_step_distilled: bool = Field(
        False,
        description="Train a step-distilled model (the family table says which: Z-Image-Turbo, the 4-step FLUX.2-klein) with a per-step "
        "algorithm anyway. Its few sampling steps were distilled to match a teacher, not to be an SDE's steps, so "
        "the per-step log-probs the algorithm trains are not a policy it was trained as; such runs are refused "
        "unless this is true (Flow-Factory trains Z-Image-Turbo with GRPO so). The forward-process algorithms "
        "train on final samples and need no override.",
    )

    @model_validator(mode="after")
    def _check_family(self) -> ModelConfig:
        if self.family not in FAMILIES:
            raise ValueError(f"model.family {self.family!r} is not registered; choose one of {sorted(FAMILIES)}")
        FAMILIES[self.family].check_frames(self.num_frames)
        return self


SdeKind = Literal["flow_grpo", "dance", "cps"]


class SamplingConfig(_Section):
    """How rollouts are sampled: group size, step schedule and the SDE step (the algorithm's strategy,
    algorithms/, decides which steps are stochastic and trained)."""

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
    shift_mode: Literal["static", "resolution"] = Field(
        "static",
        description="'static': the fixed `shift` (SD3.5, and the FLUX papers' scripts: --shift 3). 'resolution': "
        "FluxPipeline's shift, which grows with the image token count (mu from the model's scheduler config; "
        "`shift` is then unused).",
    )
    same_latent: bool | None = Field(
        None,
        description="One initial noise shared by the whole group; null = the algorithm's paper default "
        "(flow_grpo, flow_grpo_fast, the forward-process family: false; dance_grpo, mix_grpo: true). g2rpo "
        "always shares (one anchor).",
    )
