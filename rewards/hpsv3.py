"""HPSv3 (Ma et al. 2025, arXiv 2508.03789): a human preference score read from a vision-language model.

The design of MizzenAI/HPSv3: Qwen2-VL-7B-Instruct reads the image and an instruction that holds the prompt
and ends in a special token `<|Reward|>` added to the vocabulary; the backbone's last hidden state (after the
final norm) at that token goes through a small fp32 MLP, the reward head (Linear, ReLU, ..., Linear; HPSv3's
is hidden -> 1024 -> 16 -> 2), and the first output is the score (the second is the uncertainty term of their
ranking loss). The published file `HPSv3.safetensors` holds the whole fine-tuned model: backbone keys (in
transformers 4 names) and `rm_head.*`.

Two details kept on purpose, because the published head was trained with them: the language model runs
with sequential positions (HPSv3 calls the text model directly, so Qwen2-VL's multimodal rotary index is
never computed), and each image is resized to 256 * 28 * 28 pixels (min = max).

`model`: the Qwen2-VL folder or hub id (config, tokenizer with its chat template, image processor, base
weights); `checkpoint`: the safetensors file of the head, with or without backbone weights (a local path,
or `owner/repo/file` on the hub). The tests build a tiny random Qwen2-VL and head and load them through
this same code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rewards.base import ScoreResult, register_scorer, validate_batch
from rewards.pickscore import resolve_device

HPSV3_BACKBONE = "Qwen/Qwen2-VL-7B-Instruct"
HPSV3_CHECKPOINT = "MizzenAI/HPSv3/HPSv3.safetensors"
REWARD_TOKEN = "<|Reward|>"
HEAD_PREFIX = "rm_head."
HPSV3_PIXELS = 256 * 28 * 28  # HPSv3 resizes every image to this many pixels (448 x 448 for a square)
# Our wording of HPSv3's request (their exact instruction text may be passed as `template` to match their
# published numbers to the digit); {prompt} is the generation prompt.
DEFAULT_TEMPLATE = (
    "You are evaluating a generated image for human preference: its visual quality (plausible, sharp, "
    "detailed, aesthetic, safe) and how well it matches the text prompt (subjects, style, context, "
    "attributes, meaning). Rate it from 0 (worst) to 10 (best).\n"
    "Text prompt - {prompt}\n\n"
    "Please provide the overall ratings of this image: " + REWARD_TOKEN + "\n\nEND\n"
)


def hub_file(spec: str) -> tuple[str, str] | None:
    """(repo id, path in the repo) when `spec` names a hub file 'owner/repo/path' rather than a local file
    (one that exists, or that starts like a path); None otherwise. resolve_file and --dry-run read it alike."""
    parts = spec.split("/")
    if Path(spec).expanduser().is_file() or len(parts) < 3 or spec.startswith((".", "/", "~")):
        return None
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve_file(spec: str) -> str:
    """A local file, or `owner/repo/path/in/repo` fetched from the hub (its cache; offline mode respected)."""
    hub = hub_file(spec)
    if hub is None:
        path = Path(spec).expanduser()
        if path.is_file():
            return str(path)
        raise FileNotFoundError(f"checkpoint {spec!r}: no such file, and not a hub file 'owner/repo/file'")
    from huggingface_hub import hf_hub_download

    return hf_hub_download(*hub)


def head_layers(state: Mapping[str, object], prefix: str = HEAD_PREFIX) -> list[tuple[object, object | None]]:
    """(weight [out, in], bias [out] or None) of each Linear of a head saved as an nn.Sequential (keys
    `<prefix><index>.weight`, in index order; ReLU and Dropout hold no weights) or as a single Linear
    (`<prefix>weight`). Raises ValueError naming the keys when the layers do not chain."""
    keys = [k[len(prefix):] for k in state if k.startswith(prefix)]
    if not keys:
        raise ValueError(f"no reward head: no key starts with {prefix!r}")
    names = {k.rsplit(".", 1)[0] if "." in k else "" for k in keys}
    if names != {""} and not all(n.isdigit() for n in names):
        raise ValueError(f"reward head keys {sorted(keys)} are not an nn.Sequential of Linear layers "
                         f"({prefix}<index>.weight) nor one Linear ({prefix}weight)")
    names = sorted(names, key=lambda n: int(n) if n else 0)
    layers = []
    for n in names:
        key = prefix + (f"{n}." if n else "")
        weight = state[key + "weight"]
        layers.append((weight, state.get(key + "bias")))
    for (w, _), (w_next, _) in zip(layers[:-1], layers[1:], strict=True):
        if w_next.shape[1] != w.shape[0]:
            raise ValueError(f"reward head layers do not chain: {tuple(w.shape)} then {tuple(w_next.shape)}")
    return layers


def backbone_key(key: str) -> str | None:
    """The Qwen2VLModel key of a checkpoint key (transformers 4 or 5 names); None for keys the scorer does not
    load (the LM head: a reward model never predicts tokens; the reward head, loaded on its own)."""
    if key.startswith(("lm_head.", HEAD_PREFIX)):
        return None
    for old, new in (("model.visual.", "visual."), ("model.language_model.", "language_model."), ("visual.", "visual."),
                     ("model.", "language_model.")):
        if key.startswith(old):
            return new + key[len(old):]
    raise ValueError(f"checkpoint key {key!r} is neither Qwen2-VL's (visual., model.) nor the head's ({HEAD_PREFIX})")


def build_head(layers):
    """The reward head as a torch module in fp32: Linear layers with ReLU between them (none after the last)."""
    import torch
    from torch import nn

    modules = []
    for i, (weight, bias) in enumerate(layers):
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        modules += [linear] + ([nn.ReLU()] if i < len(layers) - 1 else [])
    return nn.Sequential(*modules).float().eval()


def reward_positions(input_ids, attention_mask, reward_id: int | None):
    """Index per row of the token whose hidden state is scored: the reward token (exactly one per row), or,
    without one, the last non-pad token (right padding)."""
    import torch

    if reward_id is None:
        return attention_mask.sum(dim=1) - 1
    hits = input_ids == reward_id
    counts = hits.sum(dim=1)
    if not bool((counts == 1).all()):
        raise ValueError(f"each request must hold the reward token exactly once; counts per row {counts.tolist()}")
    return hits.int().argmax(dim=1).to(torch.long)


@register_scorer("hpsv3")
class HPSv3Scorer:
    """reward = HPSv3's preference score (the head's first output); diagnostic `uncertainty`: its second
    output where the head has one."""

    name = "hpsv3"

    def __init__(self, model: str = HPSV3_BACKBONE, checkpoint: str = HPSV3_CHECKPOINT, processor: str | None = None,
                 template: str = DEFAULT_TEMPLATE, reward_token: str | None = REWARD_TOKEN, pixels: int = HPSV3_PIXELS,
                 device: str = "auto", dtype: str = "bfloat16", num_threads: int = 1):
        """model: Qwen2-VL folder or hub id; checkpoint: safetensors file of the reward head (and backbone, as
        HPSv3 publishes it): local path or `owner/repo/file`; processor: folder or hub id of the tokenizer and
        image processor (None: `model`'s); template: the instruction, with `{prompt}` and, when reward_token is
        set, that token once; reward_token: the special token whose hidden state is scored (None: the last
        token); pixels: each image's pixel count after resizing; dtype: the backbone's (the head runs in fp32)."""
        import torch
        from transformers import AutoImageProcessor, AutoTokenizer, Qwen2VLModel

        if "{prompt}" not in template:
            raise ValueError("template must contain {prompt}, where the generation prompt goes")
        if reward_token is not None and template.count(reward_token) != 1:
            raise ValueError(f"template must end its request with the reward token {reward_token!r} exactly once")
        torch.set_num_threads(max(1, int(num_threads)))
        self.device, self.dtype = resolve_device(device), getattr(torch, dtype)
        self.template, self.pixels = template, int(pixels)
        self.tokenizer = AutoTokenizer.from_pretrained(processor or model)
        self.image_processor = AutoImageProcessor.from_pretrained(processor or model)
        if self.tokenizer.chat_template is None or self.tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer of {processor or model!r} needs a chat template and a pad token (Qwen2-VL's has both)")
        if reward_token is not None and reward_token not in self.tokenizer.get_vocab():
            self.tokenizer.add_special_tokens({"additional_special_tokens": [reward_token]})  # as HPSv3's training did
        self.tokenizer.padding_side = "right"  # sequential positions: a left pad would shift every position
        self.reward_id = None if reward_token is None else self.tokenizer.convert_tokens_to_ids(reward_token)
        self.backbone = Qwen2VLModel.from_pretrained(model, dtype=self.dtype)
        self.head = build_head(head_layers(self._load_checkpoint(resolve_file(checkpoint))))
        rows = self.backbone.get_input_embeddings().weight.shape[0]
        if self.reward_id is not None and self.reward_id >= rows:
            raise ValueError(f"reward token id {self.reward_id} is outside the backbone's {rows} embeddings; the "
                             "checkpoint must hold the embeddings HPSv3 trained with the token added")
        self.backbone.eval().to(self.device)
        self.head.to(self.device)
        self.image_token = self.tokenizer.convert_ids_to_tokens(self.backbone.config.image_token_id)

    def _load_checkpoint(self, path: str) -> dict:
        """Copy the checkpoint's backbone tensors into the backbone, one at a time (HPSv3's file holds a whole
        7B model: no second copy in memory); return the head's tensors."""
        import torch
        from safetensors import safe_open

        state = self.backbone.state_dict()
        head, loaded = {}, set()
        with safe_open(path, framework="pt") as f:
            keys = list(f.keys())
            embed = next((k for k in keys if backbone_key(k) == "language_model.embed_tokens.weight"), None)
            if embed is not None:  # HPSv3 resized the embeddings to its tokenizer (the reward token added)
                rows = f.get_slice(embed).get_shape()[0]
                if rows != state["language_model.embed_tokens.weight"].shape[0]:
                    self.backbone.resize_token_embeddings(rows)
                    state = self.backbone.state_dict()
            for key in keys:
                if key.startswith(HEAD_PREFIX):
                    head[key] = f.get_tensor(key).float()
                    continue
                name = backbone_key(key)
                if name is None:
                    continue
                if name not in state:
                    raise ValueError(f"checkpoint {path}: key {key!r} ({name}) is not in the backbone of this model")
                tensor = f.get_tensor(key)
                if tensor.shape != state[name].shape:
                    raise ValueError(f"checkpoint {path}: {key!r} has shape {tuple(tensor.shape)}, the backbone "
                                     f"{tuple(state[name].shape)}")
                with torch.no_grad():
                    state[name].copy_(tensor)
                loaded.add(name)
        missing = sorted(set(state) - loaded)
        if loaded and missing:  # a partial backbone would mix the base model's weights with the reward model's
            raise ValueError(f"checkpoint {path} holds backbone weights but not {len(missing)} of them, e.g. {missing[:3]}")
        return head

    def _texts(self, prompts: Sequence[str], tokens_per_image: Sequence[int]) -> list[str]:
        """The chat text of each request, its one image placeholder expanded to the image's tokens (what the
        Qwen2-VL processor does; the processor class itself needs torchvision, which this project avoids)."""
        out = []
        for prompt, count in zip(prompts, tokens_per_image, strict=True):
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": self.template.format(prompt=prompt)}]}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            if text.count(self.image_token) != 1:
                raise ValueError(f"the chat template rendered {text.count(self.image_token)} image placeholders, not 1")
            out.append(text.replace(self.image_token, self.image_token * count))
        return out

    def outputs(self, images: np.ndarray, prompts: Sequence[str]) -> np.ndarray:
        """The head's outputs [B, K] in float64 (column 0 is the score)."""
        import torch

        pixels = self.image_processor(images=list(images), size={"shortest_edge": self.pixels, "longest_edge": self.pixels},
                                      return_tensors="pt")
        grid = pixels["image_grid_thw"]
        tokens = (grid.prod(dim=-1) // self.image_processor.merge_size**2).tolist()
        batch = self.tokenizer(self._texts(prompts, tokens), padding=True, return_tensors="pt")
        ids, mask = batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)
        with torch.no_grad():
            embeds = self.backbone.get_input_embeddings()(ids)
            features = self.backbone.get_image_features(pixels["pixel_values"].to(self.device, self.dtype),
                                                        grid.to(self.device)).pooler_output
            features = torch.cat(list(features)).to(embeds.dtype)
            slots = (ids == self.backbone.config.image_token_id).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(slots, features)
            # position_ids None: sequential positions, as HPSv3 was trained (module docstring)
            hidden = self.backbone.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
            rows = torch.arange(ids.shape[0], device=ids.device)
            out = self.head(hidden[rows, reward_positions(ids, mask, self.reward_id)].float())
        return out.cpu().double().numpy()

    def __call__(self, images: np.ndarray, prompts: Sequence[str], metadata: Sequence[Mapping] | None = None) -> ScoreResult:
        validate_batch(images, prompts, metadata)
        out = self.outputs(images, prompts)
        diagnostics = {"uncertainty": out[:, 1]} if out.shape[1] > 1 else {}
        return ScoreResult(out[:, 0], diagnostics)

