"""Z-Image (models/family_z_image.py) on a tiny random ZImagePipeline built here from its published configs at
toy widths (scripts/build_qwen_z_image.py: Qwen3, FLUX.1's VAE, Turbo's static shift), saved and loaded through
`from_pretrained` (nothing is downloaded):

- sampling with the policy reproduces ZImagePipeline's own loop: t = 1 - sigma, the negated output, the
  static-shift grid, and its CFG convention (pipeline guidance g = model.guidance_scale - 1);
- a step-distilled model (Z-Image-Turbo) is refused for the per-step algorithms unless the override is set;
- a learner's velocity on the embeddings a rollout actor ships (of different lengths) equals the one computed
  from the text encoder itself (tests/family_checks.py);
- the planner reads the folder and the published table (the module list equals the published architecture);
- two iterations on a local Ray with weight sync (LoRA and full fine-tuning) and a bit-exact resume.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.config import REPO_ROOT, ConfigError, load_config
from models.config import LoraSettings, ModelConfig
from models.policy import Policy
from models.schedule import sd3_sigmas
from models.sde import ode_step
from tests import family_checks
from tests.script_loader import load_script

pytestmark = pytest.mark.component

PRESET = "z_image_grpo_pickscore"
SMALL = {"algorithm.window_range": "[0, 3]"}  # the preset's window (steps 1-3 of 6) inside the tests' 3 steps
TARGETS = ["attention.to_k", "attention.to_q", "attention.to_v", "attention.to_out.0",
           "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"]  # the preset's (Flow-Factory's)
# Toy widths; everything else (single stream with refiners, RoPE, t = 1 - sigma, VAE factors) is the published config.
TOY = {
    "transformer": {"dim": 32, "n_heads": 2, "n_kv_heads": 2, "cap_feat_dim": 32, "in_channels": 4, "axes_dims": [4, 6, 6],
                    "axes_lens": [64, 32, 32]},
    "text": {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16},
    "vae": {"latent_channels": 4, "block_out_channels": (8, 8), "norm_num_groups": 4, "layers_per_block": 1,
            "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2},
}  # fmt: skip


@pytest.fixture(scope="module")
def z_path(tmp_path_factory) -> str:
    builders = load_script("scripts/build_qwen_z_image.py")
    return family_checks.saved_pipeline(tmp_path_factory, "z-image", lambda: builders.z_image_pipeline(
        builders.qwen_tokenizer(family_checks.PROMPTS), layers=1, **TOY))


def _model(path: str, **over) -> ModelConfig:
    base = {"path": path, "family": "z_image", "resolution": 32, "max_sequence_length": 32, "guidance_scale": 4.0,
            "lora": LoraSettings(rank=4, alpha=8, target_modules=TARGETS)}
    return ModelConfig(**{**base, **over})


def test_sampling_reproduces_zimagepipeline(z_path):
    """The policy's Euler ODE on its own sigmas equals ZImagePipeline's loop from the same noise: the transformer's
    t = 1 - sigma and negated output, Turbo's static shift 3 on linspace(1, 1/T, T), and CFG pos + g (pos - neg)
    with g = model.guidance_scale - 1 (the policy batches both halves in one masked call: equal up to rounding)."""
    from diffusers import ZImagePipeline

    policy = Policy.from_config(_model(z_path, lora=LoraSettings(enabled=False), negative_prompt=""))
    pipe = ZImagePipeline.from_pretrained(z_path)
    x = policy.initial_noise(1, torch.Generator().manual_seed(3))
    steps = 3
    with torch.no_grad():
        theirs = pipe(family_checks.PROMPTS[1], negative_prompt="", guidance_scale=3.0, height=32, width=32,
                      num_inference_steps=steps, latents=x.clone(), output_type="latent", max_sequence_length=32).images
        sigmas = policy.sigmas(steps, shift=3.0, shift_mode="static", grid="linear")
        torch.testing.assert_close(sigmas, pipe.scheduler.sigmas.float(), rtol=0, atol=1e-6)
        v = policy.velocity_fn(family_checks.PROMPTS[1])
        ours = x
        for i in range(steps):
            ours = ode_step(v(ours, sigmas[i].item()), ours, sigmas[i].item(), sigmas[i + 1].item())
    assert theirs.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_the_velocity_is_the_negated_output_at_one_minus_sigma(z_path):
    """v = eps - x0 at sigma is -transformer(x, t = 1 - sigma), per row, with the caption at its own length."""
    policy = Policy.from_config(_model(z_path, lora=LoraSettings(enabled=False)))
    x, sigma = policy.initial_noise(2, torch.Generator().manual_seed(4)), torch.tensor([0.8, 0.3])
    cond = policy.encode(family_checks.PROMPTS)
    with torch.no_grad():
        v = policy.velocity(x, sigma, cond, guidance_scale=1.0)
        for i in range(2):
            caption = cond.embeds[i][cond.mask[i]]
            out = policy.transformer([x[i, :, None]], 1.0 - sigma[i : i + 1], [caption], return_dict=False)[0][0]
            torch.testing.assert_close(v[i], -out[:, 0], rtol=1e-5, atol=1e-5)
    assert int(cond.mask[0].sum()) < int(cond.mask[1].sum())  # the two prompts keep their own lengths


@pytest.mark.parametrize("path", ["Tongyi-MAI/Z-Image-Turbo", "/models/z-image-turbo-local"])
def test_a_step_distilled_model_is_refused_for_per_step_algorithms(path):
    """Z-Image-Turbo under a per-step algorithm: refused with the reason and the key to set; accepted with the
    override, and accepted without it under a forward-process algorithm or for the undistilled base model."""
    preset = REPO_ROOT / "configs" / f"{PRESET}.yaml"
    with pytest.raises(ConfigError, match=r"distilled.*8 steps.*model\.allow_step_distilled=true"):
        load_config(preset, [f"model.path={path}", "model.allow_step_distilled=false"])
    assert load_config(preset, [f"model.path={path}"]).model.allow_step_distilled  # the preset's override
    nft = [f"model.path={path}", "model.family=z_image", "model.max_sequence_length=512"]
    assert load_config(REPO_ROOT / "configs" / "sd35_nft_pickscore.yaml", nft).algorithm.trains_sampling_steps is False
    base = load_config(preset, ["model.path=Tongyi-MAI/Z-Image", "model.allow_step_distilled=false"])
    assert base.algorithm.trains_sampling_steps


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_learner_velocity_on_shipped_embeddings_is_the_encoders(z_path, lora):
    family_checks.shipped_velocity_is_the_encoders(_model(z_path, lora=LoraSettings(
        enabled=lora, rank=4, alpha=8, target_modules=TARGETS)))


def test_the_planner_reads_the_folder_and_the_published_architecture(z_path):
    """pipeline_spec reads Z-Image's own config keys (dim, n_layers + refiners, cap_feat_dim, patch 2); the
    published module list and parameter count are the published config's, built on the meta device; the dry
    run prints the static grid the pipeline samples on."""
    from diffusers import ZImageTransformer2DModel

    from cluster import cost_model, model_specs
    from cluster.preflight import sampling_grids

    spec = model_specs.pipeline_spec(Path(z_path), "z_image")
    assert (spec.hidden, spec.layers, spec.pixels_per_token, spec.vae_scale, spec.latent_channels,
            spec.embed_dim, spec.pooled_dim) == (32, 2, 4, 2, 4, 32, 0)  # 1 main + 1 refiner layer over every token
    assert model_specs.lora_params(spec, TARGETS, 4) == sum(4 * (i + o) for n, i, o in spec.linears
                                                             if n.endswith(tuple("." + t for t in TARGETS)))
    widths = load_script("scripts/build_qwen_z_image.py")
    with torch.device("meta"):
        published = ZImageTransformer2DModel(n_layers=30, n_refiner_layers=2, **widths.Z_IMAGE_TRANSFORMER)
    linears = sorted((k[: -len(".weight")], p.shape[1], p.shape[0]) for k, p in published.named_parameters()
                     if k.endswith(".weight") and p.ndim == 2)
    assert sorted(cost_model.expand_linears(cost_model.PUBLISHED_LINEARS["Tongyi-MAI/Z-Image-Turbo"])) == linears
    table = model_specs.PUBLISHED_PIPELINES["Tongyi-MAI/Z-Image-Turbo"]
    assert table.transformer_params == sum(p.numel() for p in published.parameters())
    counts = cost_model.transformer_counts(linears)  # the refiners: image-only and text-only tokens
    assert counts.image > 0 and counts.text > 0 and counts.joint > 10 * counts.image
    cfg = family_checks.system_config(PRESET, z_path, Path(z_path) / "out", **SMALL)
    assert sampling_grids(cfg)["train"] == sd3_sigmas(3, 3.0).tolist()


def test_one_bf16_iteration_at_the_published_widths(real_width, tmp_path):
    """scripts/build_real_width.py's z_image folder (published widths, one block): hidden 3840, a bf16 iteration
    with LoRA on the preset's targets, CFG, Flow-GRPO-Fast's one-step window (the preset's algorithm)."""
    from cluster import model_specs

    path = real_width("z_image")
    assert model_specs.pipeline_spec(Path(path), "z_image").hidden == 3840
    model = {"family": "z_image", "guidance_scale": 4.0, "lora": LoraSettings(rank=4, alpha=8, target_modules=TARGETS)}
    family_checks.one_bf16_iteration_at_published_width(
        path, model, {"name": "flow_grpo_fast", "window_size": 1, "window_range": (0, 2)}, tmp_path, needs_gib=6.0)


@pytest.mark.system
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_trains_two_iterations_and_syncs_on_local_ray(local_ray, z_path, tmp_path, lora):
    over = SMALL if lora else {**SMALL, "model.lora.enabled": "false", "learner.learning_rate": 1e-4}
    family_checks.trains_and_syncs(family_checks.system_config(PRESET, z_path, tmp_path, **over))


@pytest.mark.system
def test_resumes_bit_exactly(local_ray, z_path, tmp_path):
    family_checks.resumes_bit_exactly(PRESET, z_path, tmp_path, **SMALL)
