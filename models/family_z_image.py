"""Z-Image (ZImagePipeline) in the family table: what its pipeline does, in the project's time convention.

Checked against diffusers 0.42's pipelines/z_image/pipeline_z_image.py and
models/transformers/transformer_z_image.py, and against Flow-Factory's adapter
(X-GenGroup/Flow-Factory src/flow_factory/models/z_image/z_image.py), which trains it with GRPO and NFT:

- text: Qwen3-4B's second-to-last hidden state of the prompt inside the tokenizer's chat template, the
  padding tokens left out (`prompt_embeds[i][prompt_masks[i]]`): a list of per-prompt lengths. Here they are
  one zero-padded [B, L, D] tensor with its mask (PromptEmbeds), split back into the list at the
  transformer call; the transformer pads each caption to a multiple of 32 with its learned cap_pad_token and
  masks the batch's padding itself, so a row's velocity does not depend on its batch (up to float rounding).
- latents: FLUX.1's 16-channel AutoencoderKL (scaling 0.3611, shift 0.1159, the default decode); the
  transformer takes a list of [C, 1 frame, h, w] latents and patches 2x2 itself.
- time: the transformer's t is 1 - sigma (t = 0 is noise: the pipeline passes (1000 - timestep) / 1000) and
  its output is x0 - eps, which the pipeline negates: v = -output.
- schedule: t = linspace(1, 1/T, T) with the scheduler's static shift (Z-Image-Turbo: shift 3.0,
  use_dynamic_shifting false), then 0: the 'linear' grid, sampling.shift_mode=static.
- CFG: the pipeline's `guidance_scale` g gives pos + g (pos - neg) = neg + (1 + g)(pos - neg): model.guidance_scale
  w = 1 + g (Z-Image-Turbo samples with g = 0, i.e. w = 1: no unconditional half). Its optional
  cfg_normalization and cfg_truncation are off by default and are not reproduced.
- Z-Image-Turbo is step-distilled (8 steps): `step_distilled` says so, and the per-step algorithms refuse it
  unless model.allow_step_distilled (cluster/config.py).
"""

from __future__ import annotations

import torch

from models.families import ModelFamily, register_family
from models.types import PromptEmbeds


@register_family("z_image")
class ZImageFamily(ModelFamily):
    """Z-Image: a single-stream DiT over [image, caption] tokens, one Qwen3 text encoder (variable-length
    embeddings), the FLUX.1 VAE, t = 1 - sigma with a negated (x0 - eps) output, plain CFG."""

    pipeline_class = "ZImagePipeline"
    required_components = ("transformer", "vae", "scheduler", "text_encoder", "tokenizer")
    uses_cfg = True
    clip_tokens = 0
    latent_patch = 2  # all_patch_size = (2,): the transformer patches 2x2 latents itself
    # A checkpointed block's recompute and backward take ~130 elements per token per hidden unit (SD3.5's MMDiT: 20):
    # fp32 RoPE and RMSNorms, SwiGLU's two 2.7h projections, peft's fp32 casts of adapted inputs (fp32 adapters).
    # Measured on CPU in bf16, one main + one refiner layer at 3840, 1040 tokens (benchmarks/memory_plan.py,
    # docs/benchmarks.md). Without checkpointing a layer keeps ~75 (+0.31 GB per row of 272 tokens): overestimated.
    train_elements_per_token_hidden = 130.0

    def __init__(self, pipe, cfg):
        super().__init__(pipe, cfg)
        if cfg.resolution % (self.vae_scale * 2):
            raise ValueError(f"model.resolution={cfg.resolution} must be a multiple of {self.vae_scale * 2} for Z-Image")
        if cfg.max_sequence_length <= 0:
            raise ValueError("model.max_sequence_length must be > 0 for Z-Image: the prompt tokens kept after its chat "
                             "template (ZImagePipeline's default is 512)")

    # ---- class-level (configs only)

    @classmethod
    def architecture(cls, transformer_config: dict, vae_config: dict) -> dict:
        t = transformer_config
        # The noise refiner's blocks see the image tokens and the context refiner's the caption's: together one
        # pass over every token per refiner layer, as the planner counts a layer (tokens x hidden).
        out = super().architecture({"num_attention_heads": t["n_heads"], "attention_head_dim": t["dim"] // t["n_heads"],
                                    "num_layers": t["n_layers"] + t["n_refiner_layers"],
                                    "joint_attention_dim": t["cap_feat_dim"]}, vae_config)
        return {**out, "pooled_dim": 0}

    @classmethod
    def step_distilled(cls, path: str) -> str | None:
        """Z-Image-Turbo (Tongyi-MAI/Z-Image-Turbo, or a folder or cache snapshot path naming it) is distilled to
        8 steps (its model card: 8 NFEs, Decoupled-DMD); the base Tongyi-MAI/Z-Image is not."""
        if "turbo" in path.lower():
            return "Z-Image-Turbo is distilled to sample in 8 steps (Decoupled-DMD)"
        return None

    # ---- the loaded model

    def encode(self, prompts: list[str]) -> PromptEmbeds:
        # _encode_prompt writes the chat-templated text into the list it is given: pass a copy.
        rows = self.pipe._encode_prompt(list(prompts), device=self.pipe.transformer.device,
                                        max_sequence_length=self.cfg.max_sequence_length)
        parts = [PromptEmbeds(r[None], r.new_zeros(1, 0), mask=torch.ones(1, r.shape[0], dtype=torch.bool, device=r.device))
                 for r in rows]
        return PromptEmbeds.cat(parts)

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        side = 2 * (self.cfg.resolution // (self.vae_scale * 2))
        return (batch, self.pipe.transformer.config.in_channels, side, side)

    def image_seq_len(self) -> int:
        return (self.cfg.resolution // (self.vae_scale * 2)) ** 2

    def forward(self, transformer, x, sigma, cond: PromptEmbeds, guidance: float) -> torch.Tensor:
        captions = list(cond.embeds) if cond.mask is None else [e[m] for e, m in zip(cond.embeds, cond.mask, strict=True)]
        out = transformer(list(x.unsqueeze(2).unbind(0)), 1.0 - sigma, captions, return_dict=False)[0]
        return -torch.stack(out)[:, :, 0]

    def blank_conditioning(self) -> PromptEmbeds:
        zero = PromptEmbeds(torch.zeros(1, 1, self.pipe.transformer.config.cap_feat_dim), torch.zeros(1, 0),
                            mask=torch.ones(1, 1, dtype=torch.bool))
        return PromptEmbeds(zero.embeds, zero.pooled, zero, zero.mask)
