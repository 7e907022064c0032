"""Build the tiny SD3-architecture pipeline of the shapes world from configs (no download).

Every part is the real diffusers / transformers class that SD3.5-Medium uses, so the policy wrapper,
LoRA and the tests exercise the same code path as on a GPU cluster; only the sizes are tiny:

- two CLIP tokenizers: a byte-level BPE trained here with the `tokenizers` library on the shapes
  captions (CLIP's normaliser and pre-tokeniser, `</w>` word suffix, <|startoftext|> / <|endoftext|>),
  saved as vocab.json + merges.txt and loaded by CLIPTokenizer(model_max_length=16) exactly as
  openai/clip-vit-large-patch14's is;
- two tiny CLIPTextModelWithProjection (no T5: SD3 pipelines accept text_encoder_3=None and pad
  with zeros);
- SD3Transformer2DModel over an 8x8x4 latent grid (patch 1): 64 image tokens;
- a tiny AutoencoderKL with 4x downsampling (32 px <-> 8x8 latents), trained on the world by
  scripts/pretrain_shapes.py; its decoder turns approximate latents into clean flat-colour shapes;
- FlowMatchEulerDiscreteScheduler(shift=3) as in SD3.

Why a latent model: a patch-4 pixel model drew only 4x4 colour blocks after 15 minutes on 2 cores
(docs/ENVIRONMENT notes), and patch 2 in pixel space costs 4x the tokens. The 4x VAE gives the
transformer 64 tokens and leaves the pixel-exact edges to a decoder that only ever saw clean renders.

Run alone, it writes an untrained pipeline (random weights) for inspection:
    python scripts/build_tiny_sd3.py --out /tmp/tiny-sd3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Iterable
from pathlib import Path

from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokeniser split pattern (transformers' CLIPTokenizer uses the same one).
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# The longest world caption is 12 tokens with BOS/EOS. CLIP-L uses 77, but every padding token is a
# key the joint attention visits in each block: 16 instead of 77 (and no T5 zeros) makes the text
# sequence 16 tokens next to 64 image tokens, about 2.5x cheaper per transformer call.
MODEL_MAX_LENGTH = 16

# The architecture of the shipped model. Sizes were picked by measured speed on 2 CPU cores
# (see the model card): they must pretrain in under an hour and run an RL iteration in seconds.
ARCH = {
    "resolution": 32,
    "vae": {"block_out_channels": (16, 32, 64), "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 16},
    "clip": {"hidden_size": 64, "projection_dim": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 128},
    "transformer": {"num_layers": 4, "attention_head_dim": 32, "num_attention_heads": 3, "patch_size": 1},
    "vocab_size": 512,
}

# Fallback corpus words: captions are the real corpus; these guarantee the base vocabulary.
SEED_WORDS = "a an the of and photo to left right above below on in one two three four five six".split()


def train_clip_tokenizer(corpus: Iterable[str], vocab_size: int, out_dir: Path) -> CLIPTokenizer:
    """Train a CLIP-style byte-level BPE on `corpus` and load it the way SD3 pipelines load CLIP-L's."""
    tok = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix="</w>", unk_token=EOS))
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS, EOS],
        end_of_word_suffix="</w>",
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(corpus) + SEED_WORDS, trainer=trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.model.save(str(out_dir))  # vocab.json + merges.txt
    vocab = json.loads((out_dir / "vocab.json").read_text())
    merges = [tuple(line.split(" ")) for line in (out_dir / "merges.txt").read_text().splitlines()[1:] if line]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=MODEL_MAX_LENGTH)


def clip_text_encoder(tokenizer: CLIPTokenizer, seed_offset: int = 0, **sizes) -> CLIPTextModelWithProjection:
    """A tiny CLIP text tower whose special-token ids match `tokenizer` (pooling reads the EOS position)."""
    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MODEL_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        hidden_act="gelu",
        **sizes,
    )
    return CLIPTextModelWithProjection(cfg)


def tiny_vae(block_out_channels, latent_channels, layers_per_block, norm_num_groups) -> AutoencoderKL:
    """AutoencoderKL with 2^(len(blocks)-1) downsampling; scaling/shift factors are set after training."""
    n = len(block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        latent_channels=latent_channels,
        norm_num_groups=norm_num_groups,
        sample_size=ARCH["resolution"],
        scaling_factor=1.0,
        shift_factor=0.0,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )


def tiny_transformer(latent_size: int, latent_channels: int, text_width: int, pooled_dim: int, **sizes):
    """SD3Transformer2DModel sized for `latent_size`^2 latents conditioned on CLIP-only prompt embeddings."""
    return SD3Transformer2DModel(
        sample_size=latent_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        joint_attention_dim=text_width,
        caption_projection_dim=sizes["num_attention_heads"] * sizes["attention_head_dim"],
        pooled_projection_dim=pooled_dim,
        pos_embed_max_size=latent_size // sizes["patch_size"],
        **sizes,
    )


def build_pipeline(corpus: Iterable[str], arch: dict = ARCH) -> StableDiffusion3Pipeline:
    """Assemble an untrained tiny SD3 pipeline; the BPE vocabulary is learned from `corpus`."""
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = train_clip_tokenizer(corpus, arch["vocab_size"], Path(tmp))
    te1 = clip_text_encoder(tokenizer, **arch["clip"])
    te2 = clip_text_encoder(tokenizer, **arch["clip"])
    vae = tiny_vae(**arch["vae"])
    latent_size = arch["resolution"] // 2 ** (len(arch["vae"]["block_out_channels"]) - 1)
    transformer = tiny_transformer(
        latent_size,
        arch["vae"]["latent_channels"],
        text_width=2 * arch["clip"]["hidden_size"],
        pooled_dim=2 * arch["clip"]["projection_dim"],
        **arch["transformer"],
    )
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae,
        text_encoder=te1,
        tokenizer=tokenizer,
        text_encoder_2=te2,
        tokenizer_2=tokenizer,
        text_encoder_3=None,
        tokenizer_3=None,
    )


def load_tiny_pipeline(folder) -> StableDiffusion3Pipeline:
    """from_pretrained for a T5-less SD3 folder: text_encoder_3/tokenizer_3 are required arguments."""
    return StableDiffusion3Pipeline.from_pretrained(folder, text_encoder_3=None, tokenizer_3=None)


def param_counts(pipe: StableDiffusion3Pipeline) -> dict[str, int]:
    """Parameter count per trainable component (for the model card)."""
    parts = {"transformer": pipe.transformer, "vae": pipe.vae, "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2}
    return {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="Folder to save the untrained pipeline into.")
    args = parser.parse_args()
    pipe = build_pipeline(["a photo of a red circle", "a photo of two blue squares"])
    pipe.save_pretrained(args.out)
    print(json.dumps(param_counts(pipe)))


if __name__ == "__main__":
    main()
