"""FLUX.2 in the family table: `flux2` (FLUX.2-dev, Flux2Pipeline) and `flux2_klein` (FLUX.2-klein 4B / 9B,
Flux2KleinPipeline). Two rows, as diffusers has two pipeline classes: the text encoders differ and so does
guidance (an embedding for dev, true CFG for klein), which the planner reads before any weights load.

Checked against diffusers 0.42's pipelines/flux2/pipeline_flux2.py and pipeline_flux2_klein.py and
models/transformers/transformer_flux2.py, and against Flow-Factory's adapters (X-GenGroup/Flow-Factory
src/flow_factory/models/flux/flux2.py and flux2_klein.py), which train both with GRPO and DiffusionNFT:

- text: the prompt inside the encoder's chat template, padded to `max_sequence_length` tokens, three hidden
  states stacked along the width (dev: Mistral-Small-3.1 layers 10, 20, 30 -> 3 x 5120; klein: Qwen3 layers
  9, 18, 27). No pooled embedding (PromptEmbeds.pooled is [B, 0]) and no mask: the transformer attends to the
  padding as it was trained to. Text position ids are (0, 0, 0, l).
- latents: the VAE's 32 channels patchified 2x2 to 128 and normalised by the VAE's batch-norm statistics; the
  pipelines draw their noise and denoise in that space, [B, 128, H/16, W/16], and so does this family (the
  latents a strategy sees). The transformer takes them as tokens [B, h w, 128] with position ids (0, i, j, 0);
  decoding undoes the batch norm and the patchify before the VAE (Flux2Pipeline's output path).
- time: timestep = sigma (the pipelines pass scheduler timesteps / 1000; the transformer scales by 1000).
- schedule: t = linspace(1, 1/T, T) with the scheduler's exponential shift by mu = compute_empirical_mu(image
  tokens, T), then 0: sampling.shift_mode=resolution (`resolution_sigmas` below).
- guidance: FLUX.2-dev is guidance-distilled: `model.guidance_scale` feeds its guidance embedding (the pipeline's
  default 4), one transformer row per latent. klein has no guidance embedding: the base models (klein-base-4B /
  9B) run true CFG with the empty negative prompt, v = v_u + w (v_c - v_u); the 4-step klein-4B / 9B are step-
  distilled (model_index.json `is_distilled`), and their pipeline ignores guidance, so only 1 is accepted here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from models.families import ModelFamily, register_family
from models.schedule import check_sigmas
from models.types import PromptEmbeds

REPO_ROOT = Path(__file__).resolve().parents[1]


def empirical_mu(image_seq_len: int, num_steps: int) -> float:
    """FLUX.2's shift exponent (black-forest-labs/flux2 sampling.py, diffusers' compute_empirical_mu): linear in
    the step count between fits at 10 and 200 steps, each linear in the image token count; above 4300 tokens
    the 200-step fit alone."""
    a1, b1, a2, b2 = 8.73809524e-05, 1.89833333, 0.00016927, 0.45666666
    m_200 = a2 * image_seq_len + b2
    if image_seq_len > 4300:
        return float(m_200)
    m_10 = a1 * image_seq_len + b1
    slope = (m_200 - m_10) / 190.0
    return float(slope * num_steps + m_200 - 200.0 * slope)


class _Flux2Base(ModelFamily):
    """What FLUX.2-dev and klein share: one LLM text encoder, 2x2-patchified batch-normed latents, RoPE ids."""

    required_components = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
    t5_component = "text_encoder"  # the encoder whose padded length is model.max_sequence_length
    clip_tokens = 0
    latent_patch = 2  # the VAE's 2x2 patchify: 16 pixels per token side
    # Measured on CPU in bf16 at the published widths (klein-4B, 1 + 1 blocks, 4 rows x 272 tokens, the presets' LoRA
    # targets) against SD3.5 in the same harness: a no-grad forward peaks at 40 elements per token per hidden unit
    # (SD3.5: 7, the planner's 8) and a forward + backward at 41 per block (SD3.5: 23, the planner's 20). The fused
    # single-block projection (q, k, v and the 2 x 3 h SwiGLU MLP in one 9 h output) and the SwiGLU MLPs' 6 h
    # intermediates are what SD3.5's blocks do not have. The training factor is scaled as SD3.5's was (20 / 23).
    train_elements_per_token_hidden = 36.0
    inference_elements_per_token_hidden = 40.0

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        if cfg.resolution % (self.vae_scale * 2):
            raise ValueError(f"model.resolution={cfg.resolution} must be a multiple of {self.vae_scale * 2} for FLUX.2")

    @classmethod
    def resolution_sigmas(cls, num_steps: int, image_seq_len: int, scheduler_config: dict) -> torch.Tensor:
        """Flux2Pipeline's grid: t = linspace(1, 1/T, T), sigma = e^mu / (e^mu + 1/t - 1) with mu = empirical_mu
        (the scheduler's exponential time shift; its base/max shift keys are not used), then 0."""
        mu = empirical_mu(image_seq_len, num_steps)
        t = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
        sigmas = math.exp(mu) / (math.exp(mu) + (1 / t - 1))
        return check_sigmas(torch.cat([sigmas.float(), torch.zeros(1)]), "sigmas", ends_at_zero=True)

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        embeds, _ = self.pipe.encode_prompt(prompt=prompts, device=self.pipe.transformer.device,
                                            max_sequence_length=self.cfg.max_sequence_length)
        return PromptEmbeds(embeds, embeds.new_zeros(embeds.shape[0], 0))

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        side = self.cfg.resolution // (self.vae_scale * 2)
        return (batch, self.pipe.transformer.config.in_channels, side, side)

    def image_seq_len(self) -> int:
        return (self.cfg.resolution // (self.vae_scale * 2)) ** 2

    def guidance_embedding(self, transformer, batch: int, guidance: float, device) -> torch.Tensor | None:
        return None

    def forward(self, transformer, x, sigma, cond: PromptEmbeds, guidance: float) -> torch.Tensor:
        b, c, h, w = x.shape
        # Every row has the same ids; the transformer reads the first row of a 3-D id tensor.
        out = transformer(
            hidden_states=x.reshape(b, c, h * w).transpose(1, 2),  # Flux2Pipeline._pack_latents
            timestep=sigma,
            guidance=self.guidance_embedding(transformer, b, guidance, x.device),
            encoder_hidden_states=cond.embeds,
            txt_ids=self.pipe._prepare_text_ids(cond.embeds[:1]).to(x.device),
            img_ids=self.pipe._prepare_latent_ids(x[:1]).to(x.device),
            return_dict=False,
        )[0]
        return out.transpose(1, 2).reshape(b, c, h, w)  # the ids are the row-major grid: a plain unpack

    def blank_conditioning(self) -> PromptEmbeds:
        zero = PromptEmbeds(torch.zeros(1, 1, self.pipe.transformer.config.joint_attention_dim), torch.zeros(1, 0))
        return PromptEmbeds(zero.embeds, zero.pooled, zero)

    def decode(self, vae, z: torch.Tensor) -> torch.Tensor:
        """Undo the batch norm (running statistics, batch_norm_eps) and the 2x2 patchify, then decode."""
        z = z.to(vae.dtype)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(z)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(z)
        return vae.decode(self.pipe._unpatchify_latents(z * std + mean), return_dict=False)[0]


@register_family("flux2")
class Flux2Family(_Flux2Base):
    """FLUX.2-dev: Mistral-Small-3.1 text encoder, guidance-distilled (the guidance embedding, no CFG)."""

    pipeline_class = "Flux2Pipeline"
    uses_cfg = False

    def guidance_embedding(self, transformer, batch: int, guidance: float, device) -> torch.Tensor | None:
        if not transformer.config.guidance_embeds:
            return None
        return torch.full((batch,), guidance, device=device, dtype=torch.float32)


# Hub ids of the step-distilled klein models (model_index.json is_distilled: true); their undistilled bases are
# FLUX.2-klein-base-4B / -9B.
DISTILLED_KLEIN = ("black-forest-labs/FLUX.2-klein-4B", "black-forest-labs/FLUX.2-klein-9B")


@register_family("flux2_klein")
class Flux2KleinFamily(_Flux2Base):
    """FLUX.2-klein: Qwen3 text encoder, no guidance embedding, true CFG with the empty negative prompt."""

    pipeline_class = "Flux2KleinPipeline"
    uses_cfg = True

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        scales = {cfg.guidance_scale, cfg.guidance_scale if cfg.eval_guidance_scale is None else cfg.eval_guidance_scale}
        if pipe.config.get("is_distilled", False) and scales != {1.0}:
            raise ValueError(
                f"{cfg.path} is a step-distilled FLUX.2-klein (model_index.json is_distilled): Flux2KleinPipeline "
                f"ignores guidance for it, so CFG at {sorted(scales)} would sample what the model never did; set "
                "model.guidance_scale=1 and model.eval_guidance_scale=1 (or use a klein-base model for CFG)"
            )

    @classmethod
    def step_distilled(cls, path: str) -> str | None:
        index = _model_index(path)
        if index is not None:
            return "its model_index.json sets is_distilled: true" if index.get("is_distilled") else None
        return "it is a 4-step FLUX.2-klein (model_index.json is_distilled)" if path in DISTILLED_KLEIN else None


def _model_index(path: str) -> dict | None:
    """model_index.json of a local pipeline folder (absolute, or relative to the cwd or the repository)."""
    for folder in (Path(path).expanduser(), REPO_ROOT / path):
        if (folder / "model_index.json").is_file():
            return json.loads((folder / "model_index.json").read_text())
    return None
