"""Qwen-Image (models/family_qwen_image.py) on a tiny random QwenImagePipeline built here from its published
configs at toy widths (scripts/build_qwen_z_image.py: Qwen2.5-VL, the video VAE, the dynamic-shift scheduler),
saved and loaded through `from_pretrained` (nothing is downloaded):

- sampling with the policy reproduces QwenImagePipeline's own loop: packing, timestep, schedule (mu from the
  token count, shift_terminal) and true CFG with its norm-preserving rescale;
- a learner's velocity on the embeddings a rollout actor ships (masked, of different lengths) equals the one
  computed from the text encoder itself (tests/family_checks.py);
- the planner reads the folder and the published table (the module list equals the published architecture);
- two iterations on a local Ray with weight sync (LoRA and full fine-tuning) and a bit-exact resume.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.config import LoraSettings, ModelConfig
from models.policy import Policy
from models.sde import ode_step
from tests import family_checks
from tests.script_loader import load_script

pytestmark = pytest.mark.component

PRESET = "qwen_image_grpo_ocr"
SMALL = {"algorithm.window_range": "[0, 3]"}  # the preset's window (steps 1-3 of 10) inside the tests' 3 steps
TARGETS = ["attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj",
           "attn.to_add_out", "img_mlp.net.0.proj", "txt_mlp.net.0.proj"]  # the preset's (Flow-Factory's)
# Toy widths; everything else (heads' layout, RoPE, VAE normalisation, scheduler) is the published config.
TOY = {
    "transformer": {"attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 32, "in_channels": 16,
                    "out_channels": 4, "axes_dims_rope": (2, 2, 4)},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1,
             "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}},
    "vision": {"hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32},
    "vae": {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 2], "num_res_blocks": 1, "temperal_downsample": [False],
            "latents_mean": [0.1, -0.2, 0.3, 0.0], "latents_std": [1.5, 0.8, 1.2, 2.0]},
}  # fmt: skip


@pytest.fixture(scope="module")
def builders():
    return load_script("scripts/build_qwen_z_image.py")


@pytest.fixture(scope="module")
def qwen_path(tmp_path_factory, builders) -> str:
    return family_checks.saved_pipeline(tmp_path_factory, "qwen-image", lambda: builders.qwen_image_pipeline(
        builders.qwen_tokenizer(family_checks.PROMPTS), layers=1, **TOY))


def _model(path: str, **over) -> ModelConfig:
    base = {"path": path, "family": "qwen_image", "resolution": 32, "max_sequence_length": 32, "guidance_scale": 4.0,
            "negative_prompt": " ", "lora": LoraSettings(rank=4, alpha=8, target_modules=TARGETS)}
    return ModelConfig(**{**base, **over})


def test_the_template_prefix_the_pipeline_drops_is_34_tokens(qwen_path):
    """QwenImagePipeline drops the first 34 tokens of its chat template; the offline tokenizer must split the
    prefix as Qwen2's does, or the embeddings would keep template tokens or lose prompt tokens."""
    from diffusers import QwenImagePipeline

    pipe = QwenImagePipeline.from_pretrained(qwen_path)
    prefix = pipe.prompt_template_encode.split("{}")[0]
    assert len(pipe.tokenizer(prefix).input_ids) == pipe.prompt_template_encode_start_idx == 34


def test_sampling_reproduces_qwenimagepipeline(qwen_path):
    """The policy's Euler ODE on its own sigmas equals QwenImagePipeline's loop from the same noise: 2x2 packing,
    timestep = sigma, mu from the packed token count and the stretch to shift_terminal, and true CFG rescaled to
    the conditional norm. The pipeline runs the two halves as separate calls (the negative prompt unpadded), the
    policy as one masked batch: equal up to float rounding."""
    from diffusers import QwenImagePipeline

    policy = Policy.from_config(_model(qwen_path, lora=LoraSettings(enabled=False)))
    pipe = QwenImagePipeline.from_pretrained(qwen_path)
    x = policy.initial_noise(1, torch.Generator().manual_seed(3))
    b, c, h, w = x.shape
    steps = 3
    with torch.no_grad():
        out = pipe(family_checks.PROMPTS[1], negative_prompt=" ", true_cfg_scale=4.0, height=32, width=32,
                   num_inference_steps=steps, latents=pipe._pack_latents(x.clone(), b, c, h, w), output_type="latent",
                   max_sequence_length=32).images
        theirs = pipe._unpack_latents(out, 32, 32, pipe.vae_scale_factor)[:, :, 0]
        sigmas = policy.sigmas(steps, shift=3.0, shift_mode="resolution")
        torch.testing.assert_close(sigmas[:-1], pipe.scheduler.sigmas[:-1].float(), rtol=0, atol=1e-6)
        assert abs(sigmas[-2].item() - 0.02) < 1e-6  # shift_terminal: the last step starts at 0.02
        v = policy.velocity_fn(family_checks.PROMPTS[1])
        ours = x
        for i in range(steps):
            ours = ode_step(v(ours, sigmas[i].item()), ours, sigmas[i].item(), sigmas[i + 1].item())
    assert theirs.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shift_type", ["exponential", "linear"])
@pytest.mark.parametrize("terminal", [0.02, None])
@pytest.mark.parametrize(("steps", "tokens"), [(10, 1024), (28, 4096), (3, 64)])
def test_the_resolution_grid_is_the_schedulers(builders, shift_type, terminal, steps, tokens):
    """models/schedule.py resolution_sigmas equals FlowMatchEulerDiscreteScheduler.set_timesteps(linspace(1, 1/T, T),
    mu) for Qwen-Image's config, its exponential or linear time shift, with and without shift_terminal."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

    from models.schedule import resolution_sigmas

    config = {**builders.QWEN_IMAGE_SCHEDULER, "time_shift_type": shift_type, "shift_terminal": terminal}
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=calculate_shift(tokens, 256, 8192, 0.5, 0.9))
    torch.testing.assert_close(resolution_sigmas(steps, tokens, config), scheduler.sigmas.float(), rtol=0, atol=2e-7)


def test_true_cfg_is_rescaled_to_the_conditional_norm_per_token(qwen_path):
    """guide = comb ||v_c|| / ||comb|| over each packed token's 4 x C channels (pipeline_qwenimage.py); guidance 1
    runs no unconditional half and is the conditional velocity exactly."""
    policy = Policy.from_config(_model(qwen_path))
    family_checks.perturb(policy)
    x, sigma = policy.initial_noise(2, torch.Generator().manual_seed(4)), torch.tensor([0.8, 0.3])
    cond = policy.encode(family_checks.PROMPTS)
    with torch.no_grad():
        v_c = policy.velocity(x, sigma, cond, guidance_scale=1.0)
        v_u = policy.velocity(x, sigma, policy.negative(2), guidance_scale=1.0)
        guided = policy.velocity(x, sigma, cond, guidance_scale=4.0)
    b, c, h, w = x.shape
    pack = policy.pipe._pack_latents
    comb = pack(v_u + 4.0 * (v_c - v_u), b, c, h, w)
    expected = comb * (pack(v_c, b, c, h, w).norm(dim=-1, keepdim=True) / comb.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(pack(guided, b, c, h, w), expected, rtol=1e-4, atol=1e-5)
    token_norms = pack(guided, b, c, h, w).norm(dim=-1)
    torch.testing.assert_close(token_norms, pack(v_c, b, c, h, w).norm(dim=-1), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(guided, v_u + 4.0 * (v_c - v_u), atol=1e-3)  # the rescale changes plain CFG


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_learner_velocity_on_shipped_embeddings_is_the_encoders(qwen_path, lora):
    family_checks.shipped_velocity_is_the_encoders(_model(qwen_path, lora=LoraSettings(
        enabled=lora, rank=4, alpha=8, target_modules=TARGETS)))


def test_the_planner_reads_the_folder_and_the_published_architecture(qwen_path):
    """pipeline_spec reads Qwen-Image's own config keys (the video VAE's temporal downsampling, no pooled
    embedding); the published module list and parameter count are the published config's, built on the meta
    device; the dry run prints the pipeline's grid from the folder's scheduler config."""
    from diffusers import QwenImageTransformer2DModel

    from cluster import cost_model, model_specs
    from cluster.preflight import sampling_grids
    from models.schedule import resolution_sigmas

    spec = model_specs.pipeline_spec(Path(qwen_path), "qwen_image")
    assert (spec.hidden, spec.layers, spec.pixels_per_token, spec.vae_scale, spec.latent_channels,
            spec.embed_dim, spec.pooled_dim) == (16, 1, 4, 2, 4, 32, 0)
    assert spec.scheduler["shift_terminal"] == 0.02 and spec.text_encoder_params["text_encoder"] > 0
    assert model_specs.lora_params(spec, TARGETS, 4) == sum(4 * (i + o) for n, i, o in spec.linears
                                                             if n.endswith(tuple("." + t for t in TARGETS)))
    widths = load_script("scripts/build_qwen_z_image.py")
    with torch.device("meta"):
        published = QwenImageTransformer2DModel(num_layers=60, **widths.QWEN_IMAGE_TRANSFORMER)
    linears = sorted((k[: -len(".weight")], p.shape[1], p.shape[0]) for k, p in published.named_parameters()
                     if k.endswith(".weight") and p.ndim == 2)
    assert sorted(cost_model.expand_linears(cost_model.PUBLISHED_LINEARS["Qwen/Qwen-Image"])) == linears
    table = model_specs.PUBLISHED_PIPELINES["Qwen/Qwen-Image"]
    assert table.transformer_params == sum(p.numel() for p in published.parameters())
    assert table.scheduler["max_shift"] == widths.QWEN_IMAGE_SCHEDULER["max_shift"]
    cfg = family_checks.system_config(PRESET, qwen_path, Path(qwen_path) / "out", **SMALL)
    grids = sampling_grids(cfg)
    assert np.allclose(grids["train"], resolution_sigmas(3, 64, spec.scheduler).tolist())
    assert np.allclose(grids["train"], Policy.from_config(cfg.model).sigmas(3, 3.0, "resolution").tolist())


def test_one_bf16_iteration_at_the_published_widths(real_width, tmp_path):
    """scripts/build_real_width.py's qwen_image folder (published widths, one block): hidden 3072, a bf16 iteration
    with LoRA on the preset's targets, CFG, Flow-GRPO-Fast's one-step window (the preset's algorithm)."""
    from cluster import model_specs

    path = real_width("qwen_image")
    assert model_specs.pipeline_spec(Path(path), "qwen_image").hidden == 3072
    model = {"family": "qwen_image", "guidance_scale": 4.0, "negative_prompt": " ",
             "lora": LoraSettings(rank=4, alpha=8, target_modules=TARGETS)}
    family_checks.one_bf16_iteration_at_published_width(
        path, model, {"name": "flow_grpo_fast", "window_size": 1, "window_range": (0, 2)}, tmp_path, needs_gib=6.0)


@pytest.mark.system
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_trains_two_iterations_and_syncs_on_local_ray(local_ray, qwen_path, tmp_path, lora):
    over = SMALL if lora else {**SMALL, "model.lora.enabled": "false", "learner.learning_rate": 1e-4}
    family_checks.trains_and_syncs(family_checks.system_config(PRESET, qwen_path, tmp_path, **over))


@pytest.mark.system
def test_resumes_bit_exactly(local_ray, qwen_path, tmp_path):
    family_checks.resumes_bit_exactly(PRESET, qwen_path, tmp_path, **SMALL)
