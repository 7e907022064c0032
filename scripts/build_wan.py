"""Wan2.1 text-to-video pipelines (WanPipeline) from their published configs, with random weights and any depth
(nothing is downloaded): the family test (tests/test_family_wan.py) builds one at toy widths, scripts/build_real_width.py
at the published widths with reduced depth, both with this code.

- Wan2.1-T2V-1.3B (Wan-AI/Wan2.1-T2V-1.3B-Diffusers */config.json): WanTransformer3DModel 1536 wide (12 heads x 128),
  FFN 8960, patch (1, 2, 2), text_dim 4096, freq_dim 256, qk_norm rms_norm_across_heads, cross_attn_norm (published:
  30 layers, 1.42 B parameters); 14B: 5120 wide (40 heads), FFN 13824 (published: 40 layers).
- text encoder: UMT5-XXL's encoder as UMT5EncoderModel: d_model 4096, 64 heads x 64, gated-gelu FFN 10240, 32
  relative-position buckets (published: 24 layers, vocabulary 256384; 5.7 B parameters).
- AutoencoderKLWan as published (base_dim 96, z_dim 16, dim_mult 1 2 4 4, 2 resnets, temporal downsampling in the last
  two stages: 8x spatial, 4x temporal; latents_mean / latents_std are diffusers' defaults, the published values).
- scheduler: UniPCMultistepScheduler(prediction_type flow_prediction, use_flow_sigmas, flow_shift 3.0), as published
  (the pipeline's docs: shift 3.0 at 480p, 5.0 at 720p).
- tokenizer: a unigram tokenizer in T5's layout over a corpus (scripts/build_real_width.py `t5_tokenizer`); UMT5's own
  256k vocabulary is the one thing narrower than published.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import T5Tokenizer, UMT5Config, UMT5EncoderModel

WAN_1_3B = {"patch_size": (1, 2, 2), "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
            "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "cross_attn_norm": True,
            "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024}  # fmt: skip
WAN_14B = {**WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824}
PUBLISHED_LAYERS = {"1.3B": 30, "14B": 40}
UMT5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "feed_forward_proj": "gated-gelu",
            "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "tie_word_embeddings": False}  # fmt: skip
WAN_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
           "temperal_downsample": [False, True, True], "scale_factor_spatial": 8, "scale_factor_temporal": 4}  # fmt: skip
WAN_SCHEDULER = {"prediction_type": "flow_prediction", "use_flow_sigmas": True, "num_train_timesteps": 1000, "flow_shift": 3.0}


def t5_tokenizer(corpus: list[str]) -> T5Tokenizer:
    """A unigram tokenizer in T5's layout (<pad>=0, </s>=1, <unk>=2) over the corpus words."""
    words = sorted({w for line in corpus for w in line.split()})
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + w, -3.0) for w in words] + [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz"]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def wan_pipeline(tok: T5Tokenizer, layers: int = 1, size: str = "1.3B", transformer: dict | None = None,
                 text: dict | None = None, vae: dict | None = None, text_layers: int = 1,
                 dtype: torch.dtype = torch.float32) -> WanPipeline:
    """WanPipeline: `layers` transformer blocks of the `size` model, `text_layers` UMT5 layers, each config the published
    one updated with the given keys (`vae`: a smaller VAE must say its own scale_factor_spatial)."""
    published = {"1.3B": WAN_1_3B, "14B": WAN_14B}[size]
    with torch.device("cpu"):
        encoder = UMT5EncoderModel(UMT5Config(**{**UMT5_XXL, "num_layers": text_layers, **(text or {}),
                                                 "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
                                                 "eos_token_id": tok.eos_token_id, "decoder_start_token_id": 0}))
        net = WanTransformer3DModel(**{**published, "num_layers": layers, **(transformer or {})})
    return WanPipeline(
        tokenizer=tok, text_encoder=encoder.to(dtype), transformer=net.to(dtype),
        vae=AutoencoderKLWan(**{**WAN_VAE, **(vae or {})}),  # float32: the pipeline's docs decode in fp32
        scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER),
    )  # fmt: skip
