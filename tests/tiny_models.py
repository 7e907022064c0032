"""Tiny random diffusers pipelines built from configs, for component tests (nothing is downloaded).

`tiny_sd3_pipeline()` reuses scripts/build_tiny_sd3.py's builders (the shipped model's own code path)
at toy sizes; `tiny_flux_pipeline()` builds FLUX.1's stack: CLIPTextModel + T5EncoderModel with
offline tokenizers, FluxTransformer2DModel with a guidance embedding, and a 2x AutoencoderKL.
Save either with `save_pretrained(folder)` and load it back through models.policy.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from build_real_width import t5_tokenizer as make_t5_tokenizer  # noqa: E402

# The per-step (Flow-GRPO family) preset, for tests of that family's keys: the default preset
# (cluster.config.DEFAULT_PRESET) is the main job's algorithm, which may be of the other family.
FLOWGRPO = Path(__file__).resolve().parents[1] / "configs" / "shapes_flowgrpo.yaml"

# Overrides that shrink the shapes presets' powered evaluation (400 images per tag, a training-prompt
# check, a probe set) to the few images a test's evaluation needs; the interval targets go with it.
SMALL_EVAL = [
    "data.eval_images_per_tag=null", "data.eval_max_halfwidth=null", "data.eval_max_halfwidth_overall=null",
    "data.eval_train_images_per_tag=0", "logging.probe_every=0",
]
from build_tiny_sd3 import clip_text_encoder, tiny_transformer, tiny_vae, train_clip_tokenizer  # noqa: E402

CORPUS = [
    "a photo of a red circle",
    "a photo of two blue squares",
    "a photo of a green triangle left of a yellow square",
    "a photo of three circles",
]
_TINY_CLIP = {"hidden_size": 16, "projection_dim": 8, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32}


def _clip_tokenizer():
    with tempfile.TemporaryDirectory() as tmp:
        return train_clip_tokenizer(CORPUS, vocab_size=300, out_dir=Path(tmp))


def tiny_sd3_pipeline(seed: int = 0) -> StableDiffusion3Pipeline:
    """SD3 without T5 over 32 px images: 2x VAE (16x16x4 latents), patch 2 transformer, 2 layers."""
    torch.manual_seed(seed)
    tokenizer = _clip_tokenizer()
    transformer = tiny_transformer(
        16, 4, text_width=32, pooled_dim=16, num_layers=2, attention_head_dim=8, num_attention_heads=2, patch_size=2
    )
    vae = tiny_vae(block_out_channels=(8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4)
    vae.register_to_config(scaling_factor=1.5, shift_factor=0.1)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=clip_text_encoder(tokenizer, **_TINY_CLIP),
        tokenizer=tokenizer,
        text_encoder_2=clip_text_encoder(tokenizer, **_TINY_CLIP),
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    """FLUX.1-dev layout at toy size: 2x VAE with 4 latent channels -> packed 16-channel tokens."""
    torch.manual_seed(seed)
    clip_tokenizer = _clip_tokenizer()
    clip = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tokenizer),
            max_position_embeddings=77,
            bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id,
            pad_token_id=clip_tokenizer.pad_token_id,
            **{k: v for k, v in _TINY_CLIP.items() if k != "projection_dim"},
        )
    )
    t5_tokenizer = make_t5_tokenizer(CORPUS)
    t5 = T5EncoderModel(
        T5Config(vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4)
    )
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=16,
        guidance_embeds=True,
        axes_dims_rope=(4, 6, 6),
    )
    vae = tiny_vae(block_out_channels=(8, 8), latent_channels=4, layers_per_block=1, norm_num_groups=4)
    vae.register_to_config(scaling_factor=1.2, shift_factor=0.05)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=clip,
        tokenizer=clip_tokenizer,
        text_encoder_2=t5,
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
