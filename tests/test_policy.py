"""models.policy on real diffusers pipelines: the shipped tiny SD3 model and a tiny random FLUX.1."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.config import LoraSettings, ModelConfig
from models.policy import ModelFolderError, Policy
from tests.test_strategies import cfg_for, run
from tests.tiny_models import tiny_flux_pipeline, tiny_sd3_pipeline

pytestmark = pytest.mark.component

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "models" / "shapes-sd3-tiny"
PROMPTS = ["a photo of a red circle", "a photo of two blue squares"]


@pytest.fixture(scope="module")
def sd3_path(tmp_path_factory) -> str:
    """The shipped model when it exists, else a tiny random SD3 pipeline saved like it."""
    if (SHIPPED / "model_index.json").is_file():
        return str(SHIPPED)
    folder = tmp_path_factory.mktemp("sd3")
    tiny_sd3_pipeline().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def flux_path(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("flux")
    tiny_flux_pipeline().save_pretrained(folder)
    return str(folder)


def _policy(path: str, **overrides) -> Policy:
    torch.manual_seed(0)
    return Policy.from_config(ModelConfig(path=path, **overrides))


def _perturb_lora(policy: Policy) -> None:
    """peft's gaussian init leaves lora_B = 0 (adapters start as the identity): make them matter."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def _inputs(policy: Policy, batch: int = 2):
    x = policy.initial_noise(batch, torch.Generator().manual_seed(2))
    return x, torch.tensor([0.9, 0.4])[:batch]


def test_sd3_velocity_shape_dtype_and_decode(sd3_path):
    policy = _policy(sd3_path)
    x, sigma = _inputs(policy)
    v = policy.velocity_fn(PROMPTS)(x, sigma)
    assert v.shape == x.shape == policy.latent_shape(2)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    images = policy.decode(x)
    assert images.shape == (2, 32, 32, 3) and images.dtype == torch.uint8
    assert torch.equal(policy.velocity_fn(PROMPTS)(x, 0.5), policy.velocity_fn(PROMPTS)(x, torch.tensor([0.5, 0.5])))


def test_bf16_weights_give_float32_velocity(sd3_path):
    policy = _policy(sd3_path, dtype="bfloat16")
    x, sigma = _inputs(policy)
    v = policy.velocity_fn(PROMPTS)(x, sigma)
    assert v.dtype == torch.float32 and torch.isfinite(v).all()
    assert all(p.dtype == torch.float32 for p in policy.trainable_parameters())


def test_lora_export_import_reproduces_velocity(sd3_path, tmp_path):
    source, target = _policy(sd3_path), _policy(sd3_path)
    _perturb_lora(source)
    x, sigma = _inputs(source)
    assert not torch.allclose(source.velocity_fn(PROMPTS)(x, sigma), target.velocity_fn(PROMPTS)(x, sigma))
    state = source.export_trainable()
    assert state and all("lora" in name for name in state)
    save_file(state, str(tmp_path / "lora.safetensors"))
    target.load_trainable(load_file(str(tmp_path / "lora.safetensors")))
    assert torch.equal(source.velocity_fn(PROMPTS)(x, sigma), target.velocity_fn(PROMPTS)(x, sigma))


def test_import_rejects_mismatched_weights(sd3_path):
    policy = _policy(sd3_path)
    state = policy.export_trainable()
    state.pop(next(iter(state)))
    with pytest.raises(KeyError, match="missing"):
        policy.load_trainable(state)


def test_reference_is_base_model_with_adapters_disabled(sd3_path):
    base, trained = _policy(sd3_path), _policy(sd3_path)
    _perturb_lora(trained)
    x, sigma = _inputs(base)
    v_base = base.velocity_fn(PROMPTS)(x, sigma)
    assert torch.equal(trained.reference_velocity_fn(PROMPTS)(x, sigma), v_base)
    assert not torch.allclose(trained.velocity_fn(PROMPTS)(x, sigma), v_base)
    assert trained.transformer.active_adapters() == ["default"]  # re-enabled afterwards


def test_cfg_is_linear_in_guidance_scale(sd3_path):
    """w = 1 is the conditional velocity, w = 0 the negative prompt's; others extrapolate between them."""
    policy = _policy(sd3_path)
    x, sigma = _inputs(policy)
    cond = policy.encode(PROMPTS)
    v_cond = policy.family.forward(policy.transformer, x, sigma * 1.0, cond, 1.0).float()
    assert torch.equal(policy.velocity(x, sigma, cond, guidance_scale=1.0), v_cond)
    v0 = policy.velocity(x, sigma, cond, guidance_scale=0.0)
    v45 = policy.velocity(x, sigma, cond, guidance_scale=4.5)
    torch.testing.assert_close(v45, v0 + 4.5 * (v_cond - v0), rtol=1e-3, atol=1e-4)  # batch-size rounding, x4.5


def test_gradients_reach_only_the_adapters(sd3_path):
    policy = _policy(sd3_path, gradient_checkpointing=True)
    assert policy.transformer.is_gradient_checkpointing
    policy.transformer.train()
    x, sigma = _inputs(policy)
    policy.velocity_fn(PROMPTS)(x, sigma).square().mean().backward()
    named = dict(policy.transformer.named_parameters())
    assert all(named[n].grad is not None for n in named if "lora_A" in n)
    assert all(p.grad is None for n, p in named.items() if "lora" not in n)
    assert all(p.grad is None for p in policy.pipe.text_encoder.parameters())


def test_prompt_encoding_is_cached(sd3_path):
    policy = _policy(sd3_path)
    calls = []
    encode = policy._cache._encode
    policy._cache._encode = lambda prompts: calls.append(list(prompts)) or encode(prompts)
    first = policy.encode(PROMPTS + PROMPTS[:1])
    second = policy.encode(PROMPTS[::-1])
    assert calls == [PROMPTS]
    assert torch.equal(first.embeds[0], first.embeds[2]) and torch.equal(first.embeds[1], second.embeds[0])
    assert not first.embeds.requires_grad


def test_full_finetuning_exports_transformer_and_keeps_a_reference(sd3_path):
    torch.manual_seed(0)
    policy = Policy.from_config(ModelConfig(path=sd3_path, lora=LoraSettings(enabled=False)), reference_copy=True)
    x, sigma = _inputs(policy)
    v_before = policy.velocity_fn(PROMPTS)(x, sigma)
    state = policy.export_trainable()
    assert set(state) == set(policy.transformer.state_dict())
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.mul_(1.01)
    assert torch.equal(policy.reference_velocity_fn(PROMPTS)(x, sigma), v_before)
    policy.load_trainable(state)
    assert torch.equal(policy.velocity_fn(PROMPTS)(x, sigma), v_before)


def test_flux_runs_through_the_same_wrapper(flux_path):
    cfg = {"family": "flux", "resolution": 16, "guidance_scale": 3.5, "max_sequence_length": 16}
    source, target = _policy(flux_path, **cfg), _policy(flux_path, **cfg)
    assert source.latent_shape(2) == (2, 4, 8, 8)
    x, sigma = _inputs(source)
    v = source.velocity_fn(PROMPTS)(x, sigma)
    assert v.shape == x.shape and v.dtype == torch.float32 and torch.isfinite(v).all()
    _perturb_lora(source)
    target.load_trainable(source.export_trainable())
    assert torch.equal(source.velocity_fn(PROMPTS)(x, sigma), target.velocity_fn(PROMPTS)(x, sigma))
    assert torch.equal(source.reference_velocity_fn(PROMPTS)(x, sigma), v)
    assert source.decode(x).shape == (2, 16, 16, 3)


def test_zero_sequence_length_is_refused_for_a_pipeline_with_t5(flux_path):
    with pytest.raises(ValueError, match="model.max_sequence_length is 0"):
        _policy(flux_path, family="flux", resolution=16, max_sequence_length=0)


def test_missing_folder_names_what_was_expected(tmp_path):
    with pytest.raises(ModelFolderError, match="model_index.json"):
        Policy.from_config(ModelConfig(path=str(tmp_path / "no-such-model")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFolderError, match="model_index.json is missing"):
        Policy.from_config(ModelConfig(path=str(tmp_path / "empty")))


def test_incomplete_folder_and_wrong_family_are_reported(sd3_path, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(sd3_path, broken)
    shutil.rmtree(broken / "transformer")
    with pytest.raises(ModelFolderError, match=r"transformer/ \(missing\)"):
        Policy.from_config(ModelConfig(path=str(broken)))
    with pytest.raises(ModelFolderError, match="model.family"):
        Policy.from_config(ModelConfig(path=sd3_path, family="flux"))


@pytest.mark.parametrize("resolution", [32, 64])
def test_flux_resolution_shift_matches_fluxpipeline(flux_path, resolution):
    """shift_mode='resolution' reproduces FluxPipeline's schedule: mu from the image token count through
    the scheduler config, then the scheduler's exponential time shift of linspace(1, 1/T, T)."""
    import numpy as np
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    policy = _policy(flux_path, family="flux", resolution=resolution, max_sequence_length=16)
    sc = policy.pipe.scheduler
    sc.register_to_config(use_dynamic_shifting=True)  # as FLUX.1's shipped scheduler config sets it
    tokens = (resolution // (policy.family.vae_scale * 2)) ** 2
    mu = calculate_shift(tokens, sc.config.get("base_image_seq_len", 256), sc.config.get("max_image_seq_len", 4096),
                         sc.config.get("base_shift", 0.5), sc.config.get("max_shift", 1.15))
    sc.set_timesteps(sigmas=np.linspace(1.0, 1 / 8, 8), mu=mu)
    ours = policy.sigmas(8, shift=3.0, shift_mode="resolution")
    torch.testing.assert_close(ours, sc.sigmas.float(), rtol=0, atol=1e-6)
    assert not torch.allclose(ours, policy.sigmas(8, shift=3.0, shift_mode="static"))  # the papers' fixed shift


def _parameters(policy: Policy) -> int:
    return sum(p.numel() for m in policy.modules() for p in m.parameters())


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_transformer_only_policy_given_the_shipped_conditioning_has_the_same_velocity(sd3_path, dtype):
    from common.data_plane import LearnerPayload, strip
    from models.types import PromptEmbeds

    cfg = {"resolution": 32, "guidance_scale": 2.0, "dtype": dtype}  # CFG: the negative travels too
    full, learner = _policy(sd3_path, **cfg), Policy.from_config(ModelConfig(path=sd3_path, **cfg), transformer_only=True)
    # The learner's policy holds the transformer only (LoRA on it): no text encoder, no VAE.
    assert [type(m).__name__ for m in learner.modules()] == ["SD3Transformer2DModel"]
    encoders_and_vae = sum(p.numel() for n in ("text_encoder", "text_encoder_2", "vae")
                           for p in getattr(full.pipe, n).parameters())
    assert _parameters(full) - _parameters(learner) == encoders_and_vae > 0
    assert learner.latent_shape(1) == full.latent_shape(1)  # the VAE's scale, read from its config alone
    _perturb_lora(full)
    learner.load_trainable(full.export_trainable())
    # What a learner rank receives: each group's conditioning through a payload (common/data_plane.py).
    shipped = []
    for prompt in PROMPTS:
        record = replace(run(cfg_for("flow_grpo", group_size=2, num_steps=2)), conditioning=full.conditioning(prompt))
        shipped.append(LearnerPayload.of(record).restore(strip(record)).conditioning)
    assert shipped[0].embeds.dtype == full.dtype and shipped[0].negative is not None
    x, sigma = _inputs(full)
    own = full.velocity_fn(PROMPTS)(x, sigma)  # the rollout actor: its own encoders and negative prompt
    assert torch.equal(learner.velocity(x, sigma, PromptEmbeds.cat(shipped)), own)
    assert torch.equal(learner.velocity(x, sigma, PromptEmbeds.cat(shipped), reference=True),
                       full.reference_velocity_fn(PROMPTS)(x, sigma))
    with pytest.raises(RuntimeError, match="loaded only the transformer"):
        learner.encode(PROMPTS)


def test_a_transformer_only_flux_policy_has_the_same_velocity(flux_path):
    cfg = {"family": "flux", "resolution": 16, "guidance_scale": 3.5, "max_sequence_length": 16}
    full, learner = _policy(flux_path, **cfg), Policy.from_config(ModelConfig(path=flux_path, **cfg), transformer_only=True)
    assert [type(m).__name__ for m in learner.modules()] == ["FluxTransformer2DModel"]
    learner.load_trainable(full.export_trainable())
    cond = full.conditioning(PROMPTS[0])
    assert cond.negative is None  # FLUX.1-dev's guidance is an embedding: no unconditional half
    x, sigma = _inputs(full)
    assert torch.equal(learner.velocity(x, sigma, cond), full.velocity_fn(PROMPTS[0])(x, sigma))
