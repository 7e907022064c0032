"""The HPSv3 scorer (rewards/hpsv3.py) on a tiny random Qwen2-VL built from a config here: a character-level
tokenizer with Qwen2-VL's special tokens and a chat template, the PIL image processor, and an HPSv3-style
checkpoint (backbone in transformers 4 names, embeddings grown by the reward token, an nn.Sequential head)
loaded through the scorer's own code. Nothing downloads."""

import os

import numpy as np
import pytest
import torch

from rewards.hpsv3 import REWARD_TOKEN, backbone_key, build_head, head_layers, reward_positions

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.component

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
CHAT_TEMPLATE = (  # Qwen2-VL's layout for one user turn (its system line left out: a tiny vocabulary)
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_hpsv3(folder, seed: int = 0) -> tuple[str, str]:
    """(Qwen2-VL folder, HPSv3-style checkpoint file). The tokenizer lacks the reward token, as Qwen2-VL's
    does; the checkpoint's embeddings have one row more for it, as HPSv3's do."""
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, Qwen2VLConfig, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    torch.manual_seed(seed)
    vocab = {t: i for i, t in enumerate(SPECIALS + [chr(c) for c in range(32, 127)] + ["\n"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: vocab[t] for t in SPECIALS}
    config = Qwen2VLConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 2, 4]},
                         pad_token_id=ids["<|endoftext|>"], bos_token_id=ids["<|im_start|>"], eos_token_id=ids["<|im_end|>"]),
        vision_config=dict(depth=1, embed_dim=16, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2, mlp_ratio=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    model_dir = folder / "qwen2vl"
    base = Qwen2VLForConditionalGeneration(config)
    base.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56).save_pretrained(model_dir)
    # The reward model: another random backbone (so loading it shows), one embedding row more, HPSv3's head
    # layout (Linear, ReLU, Dropout, Linear, ReLU, Linear -> keys 0, 3, 5), in transformers 4 key names.
    tuned = Qwen2VLForConditionalGeneration(config)
    tuned.resize_token_embeddings(len(vocab) + 1)
    head = torch.nn.Sequential(torch.nn.Linear(32, 24), torch.nn.ReLU(), torch.nn.Dropout(0.05), torch.nn.Linear(24, 16),
                               torch.nn.ReLU(), torch.nn.Linear(16, 2))
    state = {}
    for key, value in tuned.state_dict().items():
        old = key.replace("model.visual.", "visual.").replace("model.language_model.", "model.")
        state[old] = value.contiguous()
    state.update({f"rm_head.{k}": v for k, v in head.state_dict().items()})
    checkpoint = folder / "HPSv3.safetensors"
    save_file(state, checkpoint)
    return str(model_dir), str(checkpoint)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_hpsv3(tmp_path_factory.mktemp("hpsv3"))


@pytest.fixture(scope="module")
def scorer(tiny):
    from rewards.base import build_scorer

    model, checkpoint = tiny
    return build_scorer("hpsv3", model=model, checkpoint=checkpoint, pixels=56 * 56, device="cpu", dtype="float32")


def test_head_math_and_checkpoint_keys():
    rng = np.random.default_rng(0)
    w0, b0, w1, w2 = (torch.tensor(rng.normal(size=s), dtype=torch.float32) for s in ((6, 4), (6,), (3, 6), (2, 3)))
    state = {"rm_head.0.weight": w0, "rm_head.0.bias": b0, "rm_head.10.weight": w2, "rm_head.3.weight": w1}
    layers = head_layers(state)
    assert [tuple(w.shape) for w, _ in layers] == [(6, 4), (3, 6), (2, 3)]  # index order, not string order
    x = torch.tensor(rng.normal(size=(5, 4)), dtype=torch.float32)
    expected = torch.relu(torch.relu(x @ w0.T + b0) @ w1.T) @ w2.T  # ReLU between layers, none after the last
    torch.testing.assert_close(build_head(layers)(x), expected)
    assert len(head_layers({"rm_head.weight": w0})) == 1  # HPSv3's "default" head: one Linear, no bias
    with pytest.raises(ValueError, match="do not chain"):
        head_layers({"rm_head.0.weight": w0, "rm_head.1.weight": w2})
    assert backbone_key("visual.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    assert backbone_key("model.layers.0.mlp.up_proj.weight") == "language_model.layers.0.mlp.up_proj.weight"
    assert backbone_key("model.language_model.norm.weight") == "language_model.norm.weight"
    assert backbone_key("lm_head.weight") is None
    ids = torch.tensor([[5, 9, 7, 0], [5, 7, 1, 2]])
    assert reward_positions(ids, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), 7).tolist() == [2, 1]
    assert reward_positions(ids, torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]]), None).tolist() == [2, 3]
    with pytest.raises(ValueError, match="exactly once"):
        reward_positions(ids, torch.ones_like(ids), 9)


def test_scores_a_batch_deterministically_with_the_checkpoint_weights(tiny, scorer):
    from safetensors.torch import load_file

    images = np.random.default_rng(1).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    prompts = ["a red circle", "two blue squares on the left", "x"]  # different lengths: padded
    result = scorer(images, prompts, None)
    assert result.reward.shape == (3,) and np.isfinite(result.reward).all() and result.valid.all()
    assert result.diagnostics["uncertainty"].shape == (3,)
    np.testing.assert_array_equal(scorer(images, prompts, None).reward, result.reward)
    alone = np.concatenate([scorer(images[i : i + 1], prompts[i : i + 1], None).reward for i in range(3)])
    np.testing.assert_allclose(alone, result.reward, rtol=1e-4, atol=1e-5)  # right padding changes nothing
    assert len(set(np.round(result.reward, 6))) == 3  # the image and prompt matter
    state = load_file(tiny[1])  # the backbone is the checkpoint's, grown by the reward token's row
    embed = scorer.backbone.get_input_embeddings().weight
    torch.testing.assert_close(embed, state["model.embed_tokens.weight"])
    assert scorer.reward_id == embed.shape[0] - 1 == len(SPECIALS) + 96
    torch.testing.assert_close(scorer.backbone.visual.patch_embed.proj.weight, state["visual.patch_embed.proj.weight"])


def test_a_template_without_the_reward_token_is_refused(tiny):
    from rewards.hpsv3 import HPSv3Scorer

    with pytest.raises(ValueError, match="reward token"):
        HPSv3Scorer(model=tiny[0], checkpoint=tiny[1], template="rate {prompt}", device="cpu", dtype="float32")
    assert REWARD_TOKEN == "<|Reward|>"
