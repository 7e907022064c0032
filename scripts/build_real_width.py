"""Real-width, reduced-depth SD3.5-Medium and FLUX.1-dev pipelines with random weights, for CPU tests of
the GPU path (issue 13): every width as published, only the layer counts cut to fit 2 cores. SD3.5-Large
(`sd35l`), FLUX.2-dev (`flux2`) and FLUX.2-klein-4B (`flux2_klein`, scripts/build_flux2.py) likewise, and
Qwen-Image (`qwen_image`) and Z-Image (`z_image`, scripts/build_qwen_z_image.py: their published widths and why), Wan2.1-T2V-1.3B (`wan`, scripts/build_wan.py).

    python scripts/build_real_width.py OUT_DIR [--family sd35|flux|sd35l|flux2|flux2_klein|qwen_image|z_image|wan|both] [--layers N]

writes OUT_DIR/sd35-medium-real-width and OUT_DIR/flux1-dev-real-width as diffusers pipeline folders
(`save_pretrained`), loadable with `from_pretrained` like the hub models. What is kept from the published
configs (stabilityai/stable-diffusion-3.5-medium and black-forest-labs/FLUX.1-dev, */config.json):

- SD3.5-Medium transformer: hidden 1536 (24 heads x 64), patch 2, 16 latent channels, joint_attention_dim
  4096, caption_projection_dim 1536, pooled_projection_dim 2048 (CLIP-L 768 + CLIP-G 1280),
  pos_embed_max_size 384, RMS qk-norm, MMDiT-X dual attention in the first layers. Published: 24 layers.
- FLUX.1-dev transformer: hidden 3072 (24 heads x 128), 64 packed input channels (16 latent x 2x2),
  joint_attention_dim 4096, pooled_projection_dim 768, guidance embedding, RoPE axes (16, 56, 56).
  Published: 19 double and 38 single blocks.
- Text encoders: CLIP-L (768, 12 heads, MLP 3072, quick_gelu), CLIP-G (1280, 20 heads, MLP 5120, gelu),
  T5-XXL encoder (d_model 4096, 64 heads x 64, gated-gelu MLP 10240). Published: 12 / 32 / 24 layers.
- VAE: 16 latent channels, blocks (128, 256, 512, 512) (8x downsampling), no quant convs, scaling and
  shift factors as published (SD3.5: 1.5305 / 0.0609; FLUX.1: 0.3611 / 0.1159). Published: 2 resnets
  per block, kept.

Tokenizers are built offline (scripts/build_tiny_sd3.py's CLIP BPE, a T5 unigram over the same corpus):
their vocabularies are small, so the embedding tables are the one thing narrower than published in rows.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_flux2 import OUT_LAYERS as FLUX2_OUT_LAYERS  # noqa: E402
from build_flux2 import flux2_pipeline  # noqa: E402
from build_qwen_z_image import qwen_image_pipeline, qwen_tokenizer, z_image_pipeline  # noqa: E402
from build_tiny_sd3 import MODEL_MAX_LENGTH, train_clip_tokenizer  # noqa: E402
from build_wan import wan_pipeline  # noqa: E402

CORPUS = [
    "a photo of a red circle", "a photo of two blue squares", "a green triangle left of a yellow square",
    "a cat sitting on a wooden table", "a sign that says hello world", "a bowl of fruit on a kitchen counter",
]  # fmt: skip
CLIP_L = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "projection_dim": 768,
          "hidden_act": "quick_gelu"}  # fmt: skip
CLIP_G = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20, "projection_dim": 1280,
          "hidden_act": "gelu"}  # fmt: skip
T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "feed_forward_proj": "gated-gelu"}
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": (128, 256, 512, 512),
       "layers_per_block": 2, "norm_num_groups": 32, "use_quant_conv": False, "use_post_quant_conv": False,
       "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4}  # fmt: skip
SD35_TRANSFORMER = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "attention_head_dim": 64,
                    "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
                    "pooled_projection_dim": 2048, "pos_embed_max_size": 384, "qk_norm": "rms_norm"}  # fmt: skip
FLUX_TRANSFORMER = {"patch_size": 1, "in_channels": 64, "attention_head_dim": 128, "num_attention_heads": 24,
                    "joint_attention_dim": 4096, "pooled_projection_dim": 768, "guidance_embeds": True,
                    "axes_dims_rope": (16, 56, 56)}  # fmt: skip


def t5_tokenizer(corpus: list[str]) -> T5Tokenizer:
    """A unigram T5 tokenizer over the corpus words, in T5's layout (<pad>=0, </s>=1, <unk>=2)."""
    words = sorted({w for line in corpus for w in line.split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def clip(cls, tokenizer, layers: int, sizes: dict):
    return cls(CLIPTextConfig(
        vocab_size=len(tokenizer), max_position_embeddings=MODEL_MAX_LENGTH, num_hidden_layers=layers,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        **({k: v for k, v in sizes.items() if k != "projection_dim"} if cls is CLIPTextModel else sizes),
    ))  # fmt: skip


def t5(tokenizer, layers: int) -> T5EncoderModel:
    return T5EncoderModel(T5Config(vocab_size=len(tokenizer), num_layers=layers, **T5_XXL))


def sd35_medium(layers: int, clip_tok, t5_tok) -> StableDiffusion3Pipeline:
    """SD3.5-Medium's structure: MMDiT-X (dual attention in the first layers), three text encoders, CFG."""
    transformer = SD3Transformer2DModel(num_layers=layers, dual_attention_layers=tuple(range(min(layers, 13))),
                                        **SD35_TRANSFORMER)
    vae = AutoencoderKL(**VAE, scaling_factor=1.5305, shift_factor=0.0609)
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
        text_encoder=clip(CLIPTextModelWithProjection, clip_tok, 1, CLIP_L), tokenizer=clip_tok,
        text_encoder_2=clip(CLIPTextModelWithProjection, clip_tok, 1, CLIP_G), tokenizer_2=clip_tok,
        text_encoder_3=t5(t5_tok, 1), tokenizer_3=t5_tok,
    )  # fmt: skip


def flux1_dev(layers: int, clip_tok, t5_tok) -> FluxPipeline:
    """FLUX.1-dev's structure: double- and single-stream blocks, guidance embedding, CLIP-L pooled + T5."""
    transformer = FluxTransformer2DModel(num_layers=layers, num_single_layers=layers, **FLUX_TRANSFORMER)
    vae = AutoencoderKL(**VAE, scaling_factor=0.3611, shift_factor=0.1159)
    # FLUX.1-dev's scheduler_config.json: the resolution-dependent shift (sampling.shift_mode=resolution).
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096,
    )  # fmt: skip
    return FluxPipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=clip(CLIPTextModel, clip_tok, 1, CLIP_L),
        tokenizer=clip_tok, text_encoder_2=t5(t5_tok, 1), tokenizer_2=t5_tok,
    )  # fmt: skip


# stabilityai/stable-diffusion-3.5-large transformer/config.json: 38 heads x 64 (2432 wide), caption projection 2432,
# position embedding 192, no dual-attention layers. Published: 38 layers.
SD35_LARGE_TRANSFORMER = {**SD35_TRANSFORMER, "num_attention_heads": 38, "caption_projection_dim": 2432,
                          "pos_embed_max_size": 192}  # fmt: skip


def sd35_large(layers: int, clip_tok, t5_tok) -> StableDiffusion3Pipeline:
    """SD3.5-Large's structure: SD3.5-Medium's pipeline, text encoders and VAE around the wider MMDiT."""
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(num_layers=layers, **SD35_LARGE_TRANSFORMER),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=AutoencoderKL(**VAE, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=clip(CLIPTextModelWithProjection, clip_tok, 1, CLIP_L), tokenizer=clip_tok,
        text_encoder_2=clip(CLIPTextModelWithProjection, clip_tok, 1, CLIP_G), tokenizer_2=clip_tok,
        text_encoder_3=t5(t5_tok, 1), tokenizer_3=t5_tok,
    )  # fmt: skip


def flux2(variant: str):
    """FLUX.2 (scripts/build_flux2.py) at the published widths, `layers` double and `layers` single blocks, in bf16
    (dev's blocks are 0.5-1 B parameters each). The text encoder keeps its published hidden width (the transformer's
    joint_attention_dim is 3 x it) and the layer count the pipeline reads hidden states from (31 / 28), with one
    attention head and a 256-wide MLP per layer: its published 40 / 36 full layers are 24 / 4 B parameters."""
    narrow = {"num_attention_heads": 1, "num_key_value_heads": 1, "intermediate_size": 256}
    return lambda layers, clip_tok, t5_tok: flux2_pipeline(
        variant, double=layers, single=layers, text_layers=max(FLUX2_OUT_LAYERS[variant]) + 1, text=narrow,
        vision={"num_hidden_layers": 1}, dtype=torch.bfloat16)


FAMILIES = {"sd35": ("sd35-medium-real-width", sd35_medium), "flux": ("flux1-dev-real-width", flux1_dev),
            "sd35l": ("sd35-large-real-width", sd35_large), "flux2": ("flux2-dev-real-width", flux2("dev")),
            "flux2_klein": ("flux2-klein-4b-real-width", flux2("klein-4b"))}  # fmt: skip
# Qwen-Image and Z-Image (scripts/build_qwen_z_image.py): their own Qwen2-layout tokenizer, not the CLIP / T5 pair.
FAMILIES |= {"qwen_image": ("qwen-image-real-width", lambda layers, *_: qwen_image_pipeline(qwen_tokenizer(CORPUS), layers)),
             "z_image": ("z-image-real-width", lambda layers, *_: z_image_pipeline(qwen_tokenizer(CORPUS), layers))}
# Wan2.1-T2V-1.3B (scripts/build_wan.py): its 1536-wide blocks, one UMT5-XXL layer, the published video VAE, in bf16.
FAMILIES |= {"wan": ("wan21-t2v-1.3b-real-width",
                     lambda layers, clip_tok, t5_tok: wan_pipeline(t5_tok, layers, dtype=torch.bfloat16))}


def build(out_dir: Path, family: str, layers: int = 1, seed: int = 0) -> Path:
    """Write one family's folder (random weights, seeded) and return it."""
    name, make = FAMILIES[family]
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        clip_tok = train_clip_tokenizer(CORPUS, vocab_size=400, out_dir=Path(tmp))
    pipe = make(layers, clip_tok, t5_tokenizer(CORPUS))
    folder = Path(out_dir) / name
    pipe.save_pretrained(folder)
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--family", choices=[*FAMILIES, "both"], default="both")
    p.add_argument("--layers", type=int, default=1, help="transformer layers (FLUX: double and single blocks each)")
    args = p.parse_args()
    for family in ("sd35", "flux") if args.family == "both" else [args.family]:  # both: the device check's pair
        print(build(args.out_dir, family, args.layers))


if __name__ == "__main__":
    main()
