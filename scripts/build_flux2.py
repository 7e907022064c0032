"""FLUX.2 pipelines with random weights, from the published configs (no download): FLUX.2-dev
(Flux2Pipeline, Mistral-Small-3.1 text encoder, guidance embedding) and FLUX.2-klein 4B / 9B
(Flux2KleinPipeline, Qwen3 text encoder, true CFG; `distilled` marks the 4-step models, as their
model_index.json's `is_distilled` does).

    python scripts/build_flux2.py OUT_DIR [--variant dev|klein-4b|klein-9b] [--double N] [--single N]

scripts/build_real_width.py builds them at the published widths with reduced depth; tests build them at toy
widths (`flux2_pipeline(..., transformer=..., text=..., vae=...)` overrides). What is kept from the published
configs (black-forest-labs/FLUX.2-dev and FLUX.2-klein-{4B,9B}, */config.json, as diffusers' defaults and
its conversion script carry them):

- transformer: 128 input channels (32 VAE channels, 2x2-patchified), heads of 128, MLP ratio 3, 4-axis RoPE
  (32, 32, 32, 32), theta 2000. dev: 48 heads (6144 wide), 8 double + 48 single blocks, joint_attention_dim
  15360 (3 x 5120: Mistral's hidden states 10, 20, 30 stacked), guidance embedding. klein-4B: 24 heads, 5 + 20
  blocks, 7680 (3 x Qwen3-4B's 2560, layers 9, 18, 27). klein-9B: 32 heads, 8 + 24 blocks, 12288 (Qwen3-8B).
- text encoders: Mistral-Small-3.1-24B (Mistral3ForConditionalGeneration: text 5120 wide, 40 layers, 32 heads
  / 8 KV heads of 128, MLP 32768, vocabulary 131072; Pixtral vision 1024 wide, 24 layers), Qwen3-4B (2560, 36
  layers, 32 / 8 heads of 128, MLP 9728, tied embeddings), Qwen3-8B (4096, 36 layers, MLP 12288).
- VAE: AutoencoderKLFlux2's defaults (32 latent channels, blocks (128, 256, 512, 512), batch-norm statistics
  over the 128 patchified channels).
- scheduler: FlowMatchEulerDiscreteScheduler with use_dynamic_shifting and the exponential time shift (the
  pipelines compute mu from the image token count and the step count: compute_empirical_mu).

Tokenizers are built offline: a byte-level BPE over a small corpus and the pipelines' system message, with a
chat template of each model's layout (Mistral's [SYSTEM_PROMPT]/[INST], Qwen3's <|im_start|> with an empty
<think> block). FLUX.2-dev ships a PixtralProcessor; Flux2Pipeline only calls its apply_chat_template, which a
tokenizer alone provides, so the tokenizer stands in for it here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from tokenizers import Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen2Tokenizer,
    Qwen3Config,
    Qwen3ForCausalLM,
)

CORPUS = [
    "a photo of a red circle", "a photo of two blue squares", "a green triangle left of a yellow square",
    "a cat sitting on a wooden table", "a sign that says hello world", "a bowl of fruit on a kitchen counter",
]  # fmt: skip
_SHARED = {"patch_size": 1, "in_channels": 128, "attention_head_dim": 128, "mlp_ratio": 3.0,
           "axes_dims_rope": (32, 32, 32, 32), "rope_theta": 2000, "timestep_guidance_channels": 256}  # fmt: skip
TRANSFORMERS = {
    "dev": {**_SHARED, "num_layers": 8, "num_single_layers": 48, "num_attention_heads": 48,
            "joint_attention_dim": 15360, "guidance_embeds": True},
    "klein-4b": {**_SHARED, "num_layers": 5, "num_single_layers": 20, "num_attention_heads": 24,
                 "joint_attention_dim": 7680, "guidance_embeds": False},
    "klein-9b": {**_SHARED, "num_layers": 8, "num_single_layers": 24, "num_attention_heads": 32,
                 "joint_attention_dim": 12288, "guidance_embeds": False},
}  # fmt: skip
TEXT = {
    "dev": {"hidden_size": 5120, "intermediate_size": 32768, "num_hidden_layers": 40, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128},
    "klein-4b": {"hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": True},
    "klein-9b": {"hidden_size": 4096, "intermediate_size": 12288, "num_hidden_layers": 36, "num_attention_heads": 32,
                 "num_key_value_heads": 8, "head_dim": 128, "tie_word_embeddings": False},
}  # fmt: skip
PIXTRAL = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
           "head_dim": 64, "patch_size": 14, "image_size": 1540}  # fmt: skip
VAE: dict = {}  # AutoencoderKLFlux2's defaults are FLUX.2's VAE
# The hidden states the pipelines stack into the prompt embedding (Flux2Pipeline / Flux2KleinPipeline
# text_encoder_out_layers): a text encoder needs more layers than the last of them.
OUT_LAYERS = {"dev": (10, 20, 30), "klein-4b": (9, 18, 27), "klein-9b": (9, 18, 27)}
SCHEDULER = {"shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15, "base_image_seq_len": 256,
             "max_image_seq_len": 4096, "time_shift_type": "exponential"}  # fmt: skip
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['content'] is string %}{% set text = m['content'] %}"
    "{% else %}{% set text = m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% endif %}{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]{{ text }}[/INST]{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)
QWEN3_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)


def _byte_bpe(corpus: list[str], specials: list[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    return tok


def mistral_tokenizer(corpus: list[str] = CORPUS) -> PreTrainedTokenizerFast:
    """Mistral's special tokens and chat layout over a byte-level BPE (the system message in its corpus)."""
    specials = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"]
    tok = _byte_bpe([*corpus, SYSTEM_MESSAGE], specials, vocab_size=600)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", chat_template=MISTRAL_TEMPLATE, model_max_length=2048)


def qwen_tokenizer(corpus: list[str] = CORPUS) -> Qwen2Tokenizer:
    """Qwen2Tokenizer (Qwen3's) over a byte-level BPE, with Qwen3's chat layout."""
    tok = _byte_bpe(corpus, ["<|endoftext|>"], vocab_size=500)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in json.loads(tok.to_str())["model"]["merges"]]
    out = Qwen2Tokenizer(vocab=tok.get_vocab(), merges=merges, chat_template=QWEN3_TEMPLATE)
    out.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]})
    return out


def _text_encoder(variant: str, vocab: int, text: dict, vision: dict):
    if variant == "dev":
        config = Mistral3Config(text_config={"model_type": "mistral", "vocab_size": vocab, **text},
                                vision_config={"model_type": "pixtral", **vision}, tie_word_embeddings=False)
        return Mistral3ForConditionalGeneration(config)
    return Qwen3ForCausalLM(Qwen3Config(vocab_size=vocab, **text))


def flux2_pipeline(variant: str, *, double: int | None = None, single: int | None = None, text_layers: int | None = None,
                   transformer: dict | None = None, text: dict | None = None, vision: dict | None = None,
                   vae: dict | None = None, distilled: bool = False, dtype: torch.dtype = torch.float32,
                   seed: int = 0):
    """A FLUX.2 pipeline of `variant` ('dev', 'klein-4b', 'klein-9b'): the published configs updated with the
    given overrides, `double` / `single` transformer blocks and `text_layers` text-encoder layers (at least
    one more than the last hidden state the pipeline stacks). Weights random (seeded), in `dtype`."""
    t_conf = {**TRANSFORMERS[variant], **(transformer or {})}
    t_conf.update({k: v for k, v in (("num_layers", double), ("num_single_layers", single)) if v is not None})
    x_conf = {**TEXT[variant], **(text or {})}
    x_conf["num_hidden_layers"] = text_layers or x_conf["num_hidden_layers"]
    if x_conf["num_hidden_layers"] <= max(OUT_LAYERS[variant]):
        raise ValueError(f"{variant}'s pipeline stacks hidden states {OUT_LAYERS[variant]}: the text encoder needs "
                         f"more than {max(OUT_LAYERS[variant])} layers, got {x_conf['num_hidden_layers']}")
    if t_conf["joint_attention_dim"] != 3 * x_conf["hidden_size"]:
        raise ValueError("joint_attention_dim must be 3 x the text encoder's hidden size (three hidden states stacked)")
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the saved dtype: FLUX.2-dev's blocks are 0.8 B parameters each
    try:
        tokenizer = mistral_tokenizer() if variant == "dev" else qwen_tokenizer()
        parts = dict(
            transformer=Flux2Transformer2DModel(**t_conf),
            vae=AutoencoderKLFlux2(**{**VAE, **(vae or {})}),
            text_encoder=_text_encoder(variant, len(tokenizer), x_conf, {**PIXTRAL, **(vision or {})}),
            tokenizer=tokenizer,
            scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER),
        )
    finally:
        torch.set_default_dtype(previous)
    bn = parts["vae"].bn  # batch-norm statistics of a trained VAE are not 0 / 1: make decoding depend on them
    bn.running_mean.normal_(0.0, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    if variant == "dev":
        return Flux2Pipeline(**parts)
    return Flux2KleinPipeline(**parts, is_distilled=distilled)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--variant", choices=sorted(TRANSFORMERS), default="klein-4b")
    p.add_argument("--double", type=int, default=1)
    p.add_argument("--single", type=int, default=1)
    args = p.parse_args()
    folder = args.out_dir / f"flux2-{args.variant}"
    flux2_pipeline(args.variant, double=args.double, single=args.single,
                   text_layers=max(OUT_LAYERS[args.variant]) + 1).save_pretrained(folder)
    print(folder)


if __name__ == "__main__":
    main()
