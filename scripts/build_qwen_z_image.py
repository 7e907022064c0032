"""Qwen-Image and Z-Image pipelines from their published configs, with random weights and any depth (nothing is
downloaded): scripts/build_real_width.py builds them at the published widths with reduced depth, the family tests
(tests/test_family_qwen_image.py, tests/test_family_z_image.py) at toy widths with the same code.

- Qwen-Image (Qwen/Qwen-Image */config.json): transformer hidden 3072 (24 heads x 128), 64 packed input channels,
  joint_attention_dim 3584, RoPE axes (16, 56, 56) (published: 60 layers, 20.4 B parameters); its text encoder
  Qwen2.5-VL-7B as QwenImagePipeline loads it (Qwen2_5_VLForConditionalGeneration): language model 3584 wide,
  28 heads / 4 KV heads, MLP 18944, vision tower 1280 wide, 16 heads, MLP 3420, merged into 3584 (published: 28
  and 32 layers, 8.3 B parameters); AutoencoderKLQwenImage as published (base_dim 96, dim_mult 1 2 4 4, 2 resnets,
  latents_mean / latents_std: diffusers' defaults are the published values); the scheduler's dynamic shift
  (max_shift 0.9 at 8192 tokens, exponential, shift_terminal 0.02).
- Z-Image (Tongyi-MAI/Z-Image-Turbo */config.json): transformer dim 3840 (30 heads), cap_feat_dim 2560, patch 2,
  RoPE axes (32, 48, 48) (published: 30 layers + 2 noise- and 2 context-refiner layers, 6.2 B parameters); its
  text encoder Qwen3-4B as Qwen3Model: 2560 wide, 32 heads / 8 KV heads of 128, MLP 9728 (published: 36 layers;
  at least 2 here, as the pipeline reads the second-to-last hidden state); FLUX.1's VAE (scaling 0.3611, shift
  0.1159); Turbo's static shift 3.0.
- One tokenizer for both: a byte-level BPE in Qwen2's layout (`qwen_tokenizer`) trained offline on a corpus and
  Qwen-Image's template words, so that QwenImagePipeline's template prefix is 34 tokens as with Qwen2's own
  tokenizer (the pipeline drops exactly 34), with a chat template reduced to Z-Image's one user turn. Its
  vocabulary is small, so the embedding tables are the one thing narrower than published in rows.
"""

from __future__ import annotations

import json

from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    FlowMatchEulerDiscreteScheduler,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    ZImagePipeline,
    ZImageTransformer2DModel,
)
from tokenizers import Regex, Tokenizer, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3Model,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

QWEN_IMAGE_TRANSFORMER = {"patch_size": 2, "in_channels": 64, "out_channels": 16, "attention_head_dim": 128,
                          "num_attention_heads": 24, "joint_attention_dim": 3584, "axes_dims_rope": (16, 56, 56)}  # fmt: skip
QWEN25_VL_TEXT = {"hidden_size": 3584, "intermediate_size": 18944, "num_attention_heads": 28, "num_key_value_heads": 4,
                  "rms_norm_eps": 1e-6, "rope_theta": 1e6, "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}  # fmt: skip
QWEN25_VL_VISION = {"hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 3584, "patch_size": 14,
                    "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112, "hidden_act": "silu"}  # fmt: skip
QWEN_IMAGE_VAE = {"base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "temperal_downsample": [False, True, True]}
QWEN_IMAGE_SCHEDULER = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 8192, "max_shift": 0.9, "shift": 1.0,
                        "shift_terminal": 0.02, "time_shift_type": "exponential", "use_dynamic_shifting": True}  # fmt: skip
Z_IMAGE_TRANSFORMER = {"all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": 16, "dim": 3840, "n_heads": 30,
                       "n_kv_heads": 30, "cap_feat_dim": 2560, "norm_eps": 1e-5, "qk_norm": True, "rope_theta": 256.0,
                       "t_scale": 1000.0, "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512]}  # fmt: skip
QWEN3_4B = {"hidden_size": 2560, "intermediate_size": 9728, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
            "rms_norm_eps": 1e-6, "rope_theta": 1e6, "tie_word_embeddings": True}  # fmt: skip
FLUX_VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 16, "block_out_channels": (128, 256, 512, 512),
            "layers_per_block": 2, "norm_num_groups": 32, "use_quant_conv": False, "use_post_quant_conv": False,
            "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
            "scaling_factor": 0.3611, "shift_factor": 0.1159}  # fmt: skip

# QwenImagePipeline.prompt_template_encode's fixed system prompt (the pipeline drops the template's first 34 tokens).
QWEN_IMAGE_SYSTEM = ("Describe the image by detailing the color, shape, size, texture, quantity, text, spatial "
                     "relationships of the objects and background:")
QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# Qwen3's chat template reduced to what ZImagePipeline renders: one user turn and the assistant's opening.
QWEN_CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                      "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def qwen_tokenizer(corpus: list[str], vocab_size: int = 600) -> Qwen2Tokenizer:
    """A byte-level BPE in Qwen2's layout (its pre-tokeniser; <|endoftext|>, <|im_start|>, <|im_end|>) trained on the
    corpus and Qwen-Image's template words, with a chat template for Z-Image."""
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIALS, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([*corpus, QWEN_IMAGE_SYSTEM, "system\nuser\nassistant\n"], trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    out = Qwen2Tokenizer(vocab=model["vocab"], merges=[tuple(m) for m in model["merges"]],
                         additional_special_tokens=QWEN_SPECIALS[1:])
    out.chat_template = QWEN_CHAT_TEMPLATE
    return out


def _special_ids(tok: Qwen2Tokenizer) -> dict:
    """The vocabulary size and the special-token ids of `tok` (the published configs' 151643 / 151645 lie outside it)."""
    return {"vocab_size": len(tok), "bos_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
            "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"), "pad_token_id": tok.pad_token_id}


def qwen_image_pipeline(tok: Qwen2Tokenizer, layers: int = 1, transformer: dict | None = None, text: dict | None = None,
                        vision: dict | None = None, vae: dict | None = None) -> QwenImagePipeline:
    """QwenImagePipeline: `layers` transformer blocks and layers of the language model and the vision tower, each
    config the published one updated with the given keys."""
    text = {**QWEN25_VL_TEXT, "num_hidden_layers": layers, **(text or {}), **_special_ids(tok), "tie_word_embeddings": False}
    vision = {**QWEN25_VL_VISION, "depth": layers, "fullatt_block_indexes": [layers - 1], **(vision or {})}
    encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=False, **_special_ids(tok)))
    return QwenImagePipeline(
        transformer=QwenImageTransformer2DModel(**{**QWEN_IMAGE_TRANSFORMER, "num_layers": layers, **(transformer or {})}),
        vae=AutoencoderKLQwenImage(**{**QWEN_IMAGE_VAE, **(vae or {})}),
        scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER), text_encoder=encoder, tokenizer=tok,
    )  # fmt: skip


def z_image_pipeline(tok: Qwen2Tokenizer, layers: int = 1, transformer: dict | None = None, text: dict | None = None,
                     vae: dict | None = None) -> ZImagePipeline:
    """ZImagePipeline: `layers` main blocks and one noise- and one context-refiner block; Qwen3 with max(layers, 2)
    layers (the pipeline reads hidden_states[-2])."""
    encoder = Qwen3Model(Qwen3Config(**{**QWEN3_4B, "num_hidden_layers": max(layers, 2), **(text or {}), **_special_ids(tok)}))
    return ZImagePipeline(
        transformer=ZImageTransformer2DModel(**{**Z_IMAGE_TRANSFORMER, "n_layers": layers, "n_refiner_layers": 1, **(transformer or {})}),
        vae=AutoencoderKL(**{**FLUX_VAE, **(vae or {})}), text_encoder=encoder, tokenizer=tok,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )  # fmt: skip
