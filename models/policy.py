"""The policy: one wrapper over the diffusers pipelines of the family table (models/families.py).

Sampling strategies and the learner never touch diffusers: they get a velocity function

    v = policy.velocity_fn(prompts)          # prompts: one per sample, B of them
    v(x, sigma) -> float32 [B, C, h, w]      # x: latents [B, C, h, w], sigma: float or [B]

in the project's time convention (sigma in [0, 1], sigma = 1 is noise, v = eps - x0; docs in
models/sde.py). The wrapper hides each family's details: SD3's transformer takes timestep =
sigma * 1000 and CFG is a second (unconditional) half of the batch; FLUX's takes timestep = sigma,
works on packed 2x2 latents with position ids, and FLUX.1-dev's guidance is an embedding instead of
CFG. FLUX latents are kept unpacked [B, C, h, w] outside, so every strategy is model-agnostic.

Precision: weights may be bf16/fp16 (`model.dtype`), inputs are cast to the transformer's dtype and
the velocity comes back as float32, so the SDE math outside always runs in fp32. The trainable weights
(LoRA adapters, or the whole transformer) take `trainable_dtype`, which the learner and every rollout
actor derive from `learner.precision` alike (`PRECISION_DTYPES`): DeepSpeed casts the learner's module
to bf16/fp16 and keeps fp32 master weights in its optimizer, so a rollout actor holding fp32 adapters
would sample with different numbers than the learner recomputes (an on-policy ratio != 1). Full
fine-tuning keeps the transformer in `model.dtype` (cluster config requires it to match the precision),
never a second fp32 copy.

Learner ranks build it with `transformer_only=True`: no text encoders and no VAE (SD3.5's T5-XXL alone
is 9.5 GB in bf16). They never encode a prompt: each group brings the embeddings its rollout actor
sampled with, the negative prompt's included (`conditioning`, common/data_plane.py), and `velocity`
takes the unconditional half from them, so both sides compute the same velocity bit for bit.

The reference policy (KL term) is the same network with its LoRA adapters disabled: no second copy.
Full fine-tuning has no adapters to disable, so there the learner (and only the learner, only when
learner.beta > 0: `reference_copy=True`) keeps a frozen copy of the base transformer made at load time.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

from models.config import PROMPT_CACHE_SIZE, LoraSettings, ModelConfig
from models.families import family_of
from models.schedule import sigma_schedule
from models.types import PromptEmbeds

REPO_ROOT = Path(__file__).resolve().parents[1]
VelocityFn = Callable[[torch.Tensor, "float | torch.Tensor"], torch.Tensor]

_WEIGHTS = ("*.safetensors", "*.bin")
_MODEL_COMPONENTS = ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3")
# What a transformer-only load (learner ranks) keeps of the pipeline's components: they train on the prompt
# embeddings that come with each group (Rollout.conditioning) and decode nothing.
_TRANSFORMER_ONLY_KEEPS = ("transformer", "scheduler")
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# learner.precision -> the dtype of the trainable weights in the learner's DeepSpeed module (and so in
# every rollout actor).
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelFolderError(FileNotFoundError):
    """A model path that is neither a complete diffusers pipeline folder nor a loadable hub id."""


# ----------------------------------------------------------------------------- loading


def resolve_model_path(path: str) -> str:
    """A local folder (absolute, or relative to the repo root or the cwd), else the string as a hub id."""
    candidate = Path(path).expanduser()
    for folder in (candidate, REPO_ROOT / candidate) if not candidate.is_absolute() else (candidate,):
        if folder.exists():
            return str(folder.resolve())
    if _HUB_ID.match(path) and not path.startswith("."):
        return path
    raise ModelFolderError(
        f"model.path {path!r} is not a folder (looked in {Path.cwd()} and {REPO_ROOT}) and not a hub id "
        "('owner/name'). Expected a diffusers pipeline folder with model_index.json and the subfolders "
        f"{', '.join(family_of('sd3').required_components)}."
    )


def check_pipeline_folder(folder: Path, family: str) -> None:
    """Fail early, naming what is missing, instead of deep inside from_pretrained."""
    required = family_of(family).required_components
    index_file = folder / "model_index.json"
    if not index_file.is_file():
        raise ModelFolderError(
            f"{folder} is not a diffusers pipeline folder: model_index.json is missing. Expected "
            f"model_index.json and the subfolders {', '.join(required)} (save one with "
            "pipeline.save_pretrained(folder))."
        )
    index = json.loads(index_file.read_text())
    expected_class = family_of(family).pipeline_class
    if index.get("_class_name") != expected_class:
        raise ModelFolderError(
            f"{folder} holds a {index.get('_class_name')}, but model.family={family!r} expects a "
            f"{expected_class}: set model.family to match the model."
        )
    # Components are [library, class] pairs; other keys are the pipeline's own config (Flux2KleinPipeline's is_distilled).
    listed = [name for name, spec in index.items() if not name.startswith("_") and isinstance(spec, list) and spec[0]]
    problems = [f"{name}/ (missing)" for name in required if not (folder / name).is_dir()]
    for name in listed:
        sub = folder / name
        if name in _MODEL_COMPONENTS and sub.is_dir() and not any(any(sub.glob(p)) for p in _WEIGHTS):
            problems.append(f"{name}/ (no *.safetensors or *.bin weights)")
    if problems:
        raise ModelFolderError(
            f"incomplete {expected_class} folder {folder}: {'; '.join(problems)}. Expected model_index.json "
            f"and the subfolders {', '.join(required)}, each with its config and weights."
        )


def load_pipeline(cfg: ModelConfig, transformer_only: bool = False):
    """`from_pretrained(path_or_id)` for the configured family: the same call for a folder and a hub id.

    `transformer_only`: the same call with the text encoders, tokenizers and VAE passed as None, so
    diffusers loads only the transformer and the scheduler (config), in `model.dtype`."""
    import diffusers
    from diffusers import AutoencoderKL

    location = resolve_model_path(cfg.path)
    if Path(location).is_dir():
        check_pipeline_folder(Path(location), cfg.family)
    cls = getattr(diffusers, family_of(cfg.family).pipeline_class)
    try:
        index = cls.load_config(location)
        # Components saved as null (a T5-less SD3 has text_encoder_3 = None) must be passed explicitly.
        absent = {name: None for name, spec in index.items() if not name.startswith("_") and spec == [None, None]}
        if transformer_only:  # every other component of this family's index: encoders, tokenizers, VAE
            absent.update({name: None for name, spec in index.items()
                           if not name.startswith("_") and isinstance(spec, list) and name not in _TRANSFORMER_ONLY_KEEPS})
        pipe = cls.from_pretrained(location, dtype=_DTYPES[cfg.dtype], **absent)
        if transformer_only:
            # Without a VAE diffusers assumes a scale of 8; latent shapes need the folder's (its config only).
            pipe.vae_scale_factor = family_of(cfg.family).vae_scale_of(AutoencoderKL.load_config(location, subfolder="vae"))
    except OSError as err:
        raise ModelFolderError(f"could not load {cls.__name__} from {location!r}: {err}") from err
    t5 = getattr(pipe, family_of(cfg.family).t5_component, None)
    if cfg.max_sequence_length == 0 and t5 is not None:
        raise ValueError(
            f"model.max_sequence_length is 0 but {location} has a T5 text encoder; set it to the T5 length "
            "the model expects (SD3.5: 128 in Flow-GRPO, FLUX.1: 512)"
        )
    return pipe


# ----------------------------------------------------------------------------- prompt embeddings


class _PromptCache:
    """LRU cache of per-prompt embeddings: text encoders run once per distinct prompt, under no_grad."""

    def __init__(self, encode: Callable[[list[str]], PromptEmbeds], capacity: int):
        self._encode, self._capacity = encode, capacity
        self._items: OrderedDict[str, PromptEmbeds] = OrderedDict()

    def __call__(self, prompts: Sequence[str]) -> PromptEmbeds:
        missing = list(dict.fromkeys(p for p in prompts if p not in self._items))
        if missing:
            with torch.no_grad():
                fresh = self._encode(missing)
            for i, prompt in enumerate(missing):
                self._items[prompt] = fresh.trimmed(i)  # its own length, whatever it was encoded beside
        rows = []
        for prompt in prompts:
            self._items.move_to_end(prompt)
            rows.append(self._items[prompt])
        while len(self._items) > max(self._capacity, len(prompts)):
            self._items.popitem(last=False)
        return PromptEmbeds.cat(rows)


def _no_text_encoders(prompts: list[str]) -> PromptEmbeds:
    raise RuntimeError(
        f"this policy loaded only the transformer (a learner rank) and cannot encode {prompts[:3]}: its prompt "
        "embeddings come with each group (Rollout.conditioning, made by the rollout actor that sampled it)"
    )


# ----------------------------------------------------------------------------- the policy


class Policy:
    """A diffusers pipeline seen as a velocity field, with LoRA (or full) trainable weights."""

    def __init__(
        self,
        pipe,
        cfg: ModelConfig,
        device: str | torch.device = "cpu",
        prompt_cache_size: int = PROMPT_CACHE_SIZE,
        *,
        trainable_dtype: torch.dtype = torch.float32,
        reference_copy: bool = False,
        rows_per_forward: int | None = None,
        images_per_decode: int | None = None,
    ):
        """`trainable_dtype`: LoRA adapters' dtype (PRECISION_DTYPES[learner.precision]); a fully
        fine-tuned transformer stays in `model.dtype`. `reference_copy`: full fine-tuning only, keep a
        frozen base copy for the KL reference (the learner with beta > 0; rollout actors never need it).
        `rows_per_forward` / `images_per_decode`: at most this many rows per transformer call / latents
        per VAE decode (None: all at once); speed and memory only, see `velocity` and `decode`."""
        self.cfg, self.pipe, self.device = cfg, pipe, torch.device(device)
        self.rows_per_forward, self.images_per_decode = rows_per_forward, images_per_decode
        self.dtype = _DTYPES[cfg.dtype]
        pipe.to(self.device)
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.requires_grad_(False).eval()
        self.family = family_of(cfg.family)(pipe, cfg)
        self._cache = _PromptCache(self.family.encode if pipe.text_encoder is not None else _no_text_encoders,
                                   prompt_cache_size)
        self._negative: PromptEmbeds | None = None
        self._reference_copy = None
        self._setup_trainable(cfg.lora, trainable_dtype, reference_copy)
        self.set_gradient_checkpointing(cfg.gradient_checkpointing)

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, device: str | torch.device = "cpu", transformer_only: bool = False, **kwargs
    ) -> Policy:
        """Load `cfg.path` (folder or hub id) with from_pretrained and wrap it (kwargs: see __init__).
        `transformer_only` (learner ranks): no text encoders and no VAE; `velocity` then needs
        conditioning that carries its negative (`conditioning`, made where the encoders are)."""
        return cls(load_pipeline(cfg, transformer_only), cfg, device, **kwargs)

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    # -- trainable weights

    def _setup_trainable(self, lora: LoraSettings, trainable_dtype: torch.dtype, reference_copy: bool) -> None:
        """LoRA: frozen base in `model.dtype` + adapters in `trainable_dtype`. Full: the transformer in
        `model.dtype`, plus a frozen copy when `reference_copy`."""
        tr = self.transformer
        if lora.enabled:
            tr.requires_grad_(False)
            tr.add_adapter(
                LoraConfig(
                    r=lora.rank,
                    lora_alpha=lora.alpha,
                    target_modules=list(lora.target_modules),
                    init_lora_weights=lora.init,
                )
            )
            for p in tr.parameters():
                if p.requires_grad:
                    p.data = p.data.to(trainable_dtype)
        else:
            if reference_copy:
                self._reference_copy = copy.deepcopy(tr).requires_grad_(False).eval()
            tr.requires_grad_(True)

    def modules(self) -> list[torch.nn.Module]:
        """Every network this policy holds: the pipeline's components and the frozen reference copy."""
        nets = [m for m in self.pipe.components.values() if isinstance(m, torch.nn.Module)]
        return nets + ([self._reference_copy] if self._reference_copy is not None else [])

    def tensors(self) -> list[torch.Tensor]:
        """Every parameter and buffer of `modules()` (what cluster.colocate_offload moves out while idle)."""
        return [t for m in self.modules() for t in (*m.parameters(), *m.buffers())]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def export_trainable(self, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The trainable weights as a flat name -> CPU tensor dict (safetensors-compatible).

        LoRA: peft's adapter state dict (adapter name stripped), so it loads into any copy with the
        same LoraSettings; full fine-tuning: the transformer's state dict. `state_dict`: the
        transformer's state dict already gathered to CPU (ZeRO-3, learner/zero3.py) instead of its own.
        """
        state = self._trainable_names(state_dict) if state_dict is not None else self.trainable_tensors()
        copy = state_dict is None  # a gathered dict is already a private CPU copy
        return {name: t.detach().to("cpu", copy=copy).contiguous() for name, t in state.items()}

    def trainable_tensors(self) -> dict[str, torch.Tensor]:
        """The live tensors behind `export_trainable`'s names, not copies (weight sync reads and writes
        them bucket by bucket, common/weight_buckets.py); ZeRO-3 partitioned parameters as they are."""
        return self._trainable_names(self.transformer.state_dict(keep_vars=True))

    def _trainable_names(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The trainable entries of a transformer state dict under their exported names (LoRA: peft's
        adapter names, adapter name stripped)."""
        return get_peft_model_state_dict(self.transformer, state_dict=state) if self.cfg.lora.enabled else state

    def check_trainable_names(self, names: Iterable[str]) -> None:
        """KeyError unless `names` are exactly the names `export_trainable` produces."""
        own, names = set(self.export_trainable()), set(names)
        if names != own:
            missing, extra = sorted(own - names), sorted(names - own)
            raise KeyError(
                f"trainable weights do not match this policy (lora.enabled={self.cfg.lora.enabled}): "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                f"{extra[:5]}{'...' if len(extra) > 5 else ''}"
            )

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        """Load what `export_trainable` produced (weight sync, checkpoints); key sets must match."""
        self.check_trainable_names(state)
        if self.cfg.lora.enabled:
            set_peft_model_state_dict(self.transformer, state)
        else:
            self.transformer.load_state_dict(state, strict=True)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.transformer.enable_gradient_checkpointing()
        elif self.transformer.is_gradient_checkpointing:
            self.transformer.disable_gradient_checkpointing()

    # -- sampling interface

    def encode(self, prompts: Sequence[str]) -> PromptEmbeds:
        """Conditional embeddings, one row per prompt (cached per distinct prompt)."""
        return self._cache(list(prompts))

    def negative(self, batch: int) -> PromptEmbeds:
        """Embeddings of `model.negative_prompt` for the unconditional half of CFG."""
        if self._negative is None:
            self._negative = self._cache([self.cfg.negative_prompt])
        return self._negative.expand(batch)

    def conditioning(self, prompt: str) -> PromptEmbeds:
        """One prompt's embeddings [1, L, D] with, for a family with CFG, `model.negative_prompt`'s as
        `negative`: exactly what `velocity` conditions on here, so a transformer-only policy given it
        computes the same velocity bit for bit (fresh tensors, not views into the cache)."""
        cond = self.encode([prompt])
        if self.family.uses_cfg:
            cond.negative = self.encode([self.cfg.negative_prompt])
        return cond

    def blank_conditioning(self) -> PromptEmbeds:
        """Zero conditioning of one text token, with a zero negative: what a zero-weight padding batch of a
        learner rank without groups runs on (it only has to run the transformer; no encoder needed)."""
        return self.family.blank_conditioning()

    def latent_shape(self, batch: int) -> tuple[int, ...]:
        """Unpacked latent shape [B, C, h, w] for `model.resolution` (FLUX packs internally)."""
        return self.family.latent_shape(batch)

    def sigmas(self, num_steps: int, shift: float, shift_mode: str, grid: str = "linear") -> torch.Tensor:
        """The sampling schedule: a static shift on the named grid (`sampling.sigma_schedule`), or the
        resolution-dependent one of FluxPipeline and QwenImagePipeline from the pipeline's scheduler config (mu:
        FLUX.1 0.5 at 256 image tokens to 1.15 at 4096; Qwen-Image 0.5 at 256 to 0.9 at 8192, stretched to end
        at 0.02; FLUX.2 from the image tokens and the step count): the family's `resolution_sigmas`."""
        if shift_mode == "static":
            return sigma_schedule(grid, num_steps, shift)
        return self.family.resolution_sigmas(num_steps, self.family.image_seq_len(), dict(self.pipe.scheduler.config))

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """x at sigma = 1: standard normal float32 latents (draw on CPU for device-independent seeds)."""
        noise = torch.randn(self.latent_shape(batch), generator=generator, dtype=torch.float32)
        return noise.to(self.device)

    def velocity(
        self,
        x: torch.Tensor,
        sigma: float | torch.Tensor,
        cond: PromptEmbeds,
        guidance_scale: float | None = None,
        reference: bool = False,
    ) -> torch.Tensor:
        """Guided velocity v(x, sigma) as float32; differentiable w.r.t. the trainable weights.

        SD3 CFG: v = v_uncond + w * (v_cond - v_uncond), one batched forward of 2B; w = 1 skips the
        unconditional half (exactly the conditional velocity). The unconditional embeddings are
        `cond.negative` when it carries them, else this policy's encoding of `model.negative_prompt`.
        `cond` may live on the CPU (the learner's shipped embeddings): it moves to the latents' device.
        """
        w = self.cfg.guidance_scale if guidance_scale is None else guidance_scale
        b = x.shape[0]
        if cond.embeds.shape[0] == 1:
            cond = cond.expand(b)
        if cond.embeds.shape[0] != b:
            raise ValueError(f"{cond.embeds.shape[0]} prompt embeddings for a batch of {b} latents")
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device).expand(b)
        cfg = self.family.uses_cfg and w != 1.0
        if cfg:
            cond = PromptEmbeds.cat([self.negative(b) if cond.negative is None else cond.negative, cond])
            x, sigma = torch.cat([x, x]), torch.cat([sigma, sigma])
        dev = x.device
        x, cond = x.to(self.dtype), cond.to(dev, self.dtype)
        rows = self.rows_per_forward or x.shape[0]
        with self._reference_context(reference) as transformer:
            # Rows are independent, so chunking the call (G2RPO's anchor + branches + tails reach
            # ~200 rows, CFG doubles them) changes peak memory, not the result (tests/test_chunking.py).
            v = torch.cat([
                self.family.forward(
                    transformer,
                    x[i : i + rows],
                    sigma[i : i + rows],  # float32: a bf16 timestep of ~1000 would be rounded to steps of 4-8
                    cond.rows(i, i + rows),
                    w,
                ).float()
                for i in range(0, x.shape[0], rows)
            ])
        if cfg:
            v_uncond, v_cond = v.chunk(2)
            v = self.family.guide(v_uncond, v_cond, w)
        return v

    def velocity_fn(
        self, prompts: str | Sequence[str], guidance_scale: float | None = None, reference: bool = False
    ) -> VelocityFn:
        """v(x, sigma) for a fixed batch of prompts: what the strategies call.

        One prompt (a str) conditions any number of latents (a strategy's group, G2RPO's branches);
        a list conditions row by row and must match the batch.
        """
        cond = self.encode([prompts] if isinstance(prompts, str) else prompts)
        return lambda x, sigma: self.velocity(x, sigma, cond, guidance_scale, reference)

    def reference_velocity_fn(self, prompts: str | Sequence[str], guidance_scale: float | None = None) -> VelocityFn:
        """The base model's velocity (LoRA adapters disabled): the KL reference."""
        return self.velocity_fn(prompts, guidance_scale, reference=True)

    @contextlib.contextmanager
    def _reference_context(self, reference: bool) -> Iterator[torch.nn.Module]:
        if not reference:
            yield self.transformer
        elif self._reference_copy is not None:
            yield self._reference_copy
        elif not self.cfg.lora.enabled:
            raise RuntimeError(
                "the KL reference of a fully fine-tuned policy needs its frozen copy: build the Policy with "
                "reference_copy=True (the learner does when learner.beta > 0)"
            )
        else:
            self.transformer.disable_adapters()
            try:
                yield self.transformer
            finally:
                self.transformer.enable_adapters()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents [B, C, h, w] -> uint8 images [B, H, W, 3] (undo the VAE scaling and shift first),
        at most `images_per_decode` per VAE call (a group's decode at 720 px is ~100 GB otherwise). A video family's
        latents [B, C, f, h, w] -> uint8 videos [B, F, H, W, 3] (channels last, as the scorers take frames)."""
        vae = self.pipe.vae
        if vae is None:
            raise RuntimeError("Policy.decode: this policy was loaded with transformer_only=True (a learner rank's) "
                               "and has no VAE; images are decoded on the rollout actors")
        z = latents.to(self.device)
        n = self.images_per_decode or z.shape[0]
        images = torch.cat([self.family.decode(vae, z[i : i + n]).float() for i in range(0, z.shape[0], n)])
        images = ((images / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
        return images.movedim(1, -1).cpu()
