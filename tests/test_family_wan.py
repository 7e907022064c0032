"""Wan2.1 text-to-video (models/family_wan.py) on a tiny random WanPipeline built here from its published configs at toy
widths (scripts/build_wan.py: UMT5, AutoencoderKLWan with 4x temporal compression, the published UniPC scheduler),
saved and loaded through `from_pretrained` (nothing is downloaded):

- sampling with the policy reproduces WanPipeline's own loop on 5-D video latents (timestep = sigma * 1000, its CFG,
  Euler on the same grid) and its decode (latents_mean / latents_std undone, frames channels-last); the published UniPC
  grid is the linear-shift grid but for its first point;
- model.num_frames is validated (4k + 1 for Wan, 1 for the image families), and a video family refuses image scorers;
- a learner's velocity on the embeddings a rollout actor ships equals the one computed from the text encoder itself
  (tests/family_checks.py), with LoRA and fully fine-tuned;
- the planner reads the folder, scales tokens with the latent frames, and its published module list is diffusers' own;
- two iterations on a local Ray with weight sync (LoRA and full fine-tuning), the evaluation's GIFs, a bit-exact resume.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cluster.config import REPO_ROOT, ConfigError, load_config
from models.config import LoraSettings, ModelConfig
from models.policy import Policy
from models.schedule import scheduler_sigmas, sd3_sigmas, time_shift
from models.sde import ode_step
from tests import family_checks
from tests.script_loader import load_script

pytestmark = pytest.mark.component

PRESET = "wan_dancegrpo_video"
TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]  # the preset's (Pref-GRPO's Wan LoRA targets)
FRAMES = 5  # two latent frames
# The preset shrunk further: 5 frames, a video scorer over 2 of them, the tests' 3 steps.
SMALL = {"model.num_frames": FRAMES, "rewards.scorers": "[{name: video_shapes_quality, options: {frames: 2}}]"}
# Toy widths; the rest (patch (1, 2, 2), qk norms, cross-attention to UMT5 states, the causal video VAE with 4x
# temporal compression, its per-channel normalisation) is the published architecture. A 3-level VAE: 4x spatial.
TOY = {
    "transformer": {"num_attention_heads": 2, "attention_head_dim": 16, "ffn_dim": 64, "text_dim": 32, "freq_dim": 32,
                    "in_channels": 4, "out_channels": 4, "rope_max_seq_len": 64},
    "text": {"d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4},
    "vae": {"base_dim": 8, "z_dim": 4, "dim_mult": [1, 1, 1], "num_res_blocks": 1, "temperal_downsample": [True, True],
            "scale_factor_spatial": 4, "latents_mean": [0.1, -0.2, 0.3, 0.0], "latents_std": [1.5, 0.5, 2.0, 1.0]},
}  # fmt: skip


@pytest.fixture(scope="module")
def wan_path(tmp_path_factory) -> str:
    builders = load_script("scripts/build_wan.py")
    return family_checks.saved_pipeline(tmp_path_factory, "wan", lambda: builders.wan_pipeline(
        builders.t5_tokenizer(family_checks.PROMPTS), layers=1, **TOY))


def _model(path: str, **over) -> ModelConfig:
    base = {"path": path, "family": "wan", "resolution": 32, "num_frames": FRAMES, "max_sequence_length": 16,
            "guidance_scale": 5.0, "lora": LoraSettings(rank=4, alpha=8, target_modules=TARGETS)}
    return ModelConfig(**{**base, **over})


def test_sampling_and_decoding_reproduce_wanpipeline(wan_path):
    """The policy's Euler ODE on its own grid equals WanPipeline's loop from the same 5-D noise (the pipeline given an
    Euler scheduler, FlowMatchEulerDiscreteScheduler(shift 3): its type hint, and what the RL trainers step with):
    timestep = sigma * 1000, CFG v_u + 5 (v_c - v_u) with the empty negative prompt; then the decode equals the
    pipeline's video output (frames channels-last, uint8)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, WanPipeline

    policy = Policy.from_config(_model(wan_path, lora=LoraSettings(enabled=False), negative_prompt=""))
    pipe = WanPipeline.from_pretrained(wan_path)
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    x = policy.initial_noise(1, torch.Generator().manual_seed(3))
    assert x.shape == (1, 4, 2, 8, 8)  # [B, C, (5 - 1) / 4 + 1 latent frames, 32 / 4, 32 / 4]
    steps, args = 3, {"negative_prompt": "", "guidance_scale": 5.0, "height": 32, "width": 32, "num_frames": FRAMES,
                      "num_inference_steps": 3, "max_sequence_length": 16}
    with torch.no_grad():
        theirs = pipe(family_checks.PROMPTS[1], latents=x.clone(), output_type="latent", **args).frames
        sigmas = policy.sigmas(steps, shift=3.0, shift_mode="static", grid="scheduler")
        torch.testing.assert_close(sigmas, pipe.scheduler.sigmas.float(), rtol=0, atol=1e-6)
        v = policy.velocity_fn(family_checks.PROMPTS[1])
        ours = x
        for i in range(steps):
            ours = ode_step(v(ours, sigmas[i].item()), ours, sigmas[i].item(), sigmas[i + 1].item())
        video = pipe(family_checks.PROMPTS[1], latents=x.clone(), output_type="pt", **args).frames  # [B, F, 3, H, W]
    assert theirs.abs().mean() > 0.1
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    frames = policy.decode(theirs)
    assert frames.shape == (1, FRAMES, 32, 32, 3) and frames.dtype == torch.uint8
    torch.testing.assert_close(frames.float() / 255, video.permute(0, 1, 3, 4, 2).float(), rtol=0, atol=1 / 255 + 1e-6)


def test_the_published_unipc_grid_is_close_to_the_linear_shift_grid():
    """Wan's published scheduler (UniPC, flow sigmas, flow_shift 3): shift(linspace(1, 1/1000, T + 1)[:-1]) (its first
    point 1 - 1e-6), then 0 -- within 2.5e-3 of the linear-shift grid shift(linspace(1, 0, T + 1)) the preset samples on
    (sampling.sigma_schedule=linear, as the RL trainers build it) at T = 20."""
    from diffusers import UniPCMultistepScheduler

    scheduler = UniPCMultistepScheduler(**load_script("scripts/build_wan.py").WAN_SCHEDULER)
    scheduler.set_timesteps(20)
    t = torch.linspace(1.0, 1 / 1000, 21, dtype=torch.float64)[:-1]
    expected = torch.cat([time_shift(t, 3.0), torch.zeros(1, dtype=torch.float64)])
    torch.testing.assert_close(scheduler.sigmas.double(), expected, rtol=0, atol=2e-6)
    linear = sd3_sigmas(20, 3.0)
    assert (scheduler.sigmas.float() - linear).abs().max() < 2.5e-3
    assert not torch.allclose(scheduler_sigmas(20, 3.0), linear, atol=2.5e-3)  # the Euler scheduler's grid is another


def test_num_frames_is_validated_and_a_video_family_needs_video_scorers():
    with pytest.raises(ValueError, match=r"model.num_frames=6.*4k \+ 1.*5 or 9"):
        ModelConfig(path="x", family="wan", num_frames=6)
    with pytest.raises(ValueError, match=r"model.num_frames=5.*'sd3' makes images"):
        ModelConfig(num_frames=5)
    assert ModelConfig(path="x", family="wan", num_frames=81).num_frames == 81
    preset = REPO_ROOT / "configs" / f"{PRESET}.yaml"
    with pytest.raises(ConfigError, match=r"rewards.scorers\[0\].name='clipscore' scores images.*video_clipscore"):
        load_config(preset, ["rewards.scorers=[{name: clipscore}]"])


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_the_learner_velocity_on_shipped_embeddings_is_the_encoders(wan_path, lora):
    """UMT5's embeddings are padded to max_sequence_length (no mask), the negative prompt's ride along (CFG)."""
    family_checks.shipped_velocity_is_the_encoders(_model(wan_path, lora=LoraSettings(
        enabled=lora, rank=4, alpha=8, target_modules=TARGETS)))


def test_the_planner_reads_the_folder_and_the_published_architecture(wan_path):
    """pipeline_spec reads Wan's own config keys (heads x head dim, text_dim, patch (1, 2, 2), the VAE's
    scale_factor_spatial); image tokens scale with the latent frames; the published module lists and parameter counts
    are diffusers' WanTransformer3DModel's, built on the meta device from the published configs."""
    from diffusers import WanTransformer3DModel

    from cluster import cost_model, model_specs
    from cluster.preflight import sampling_grids
    from models.family_wan import wan_linears

    spec = model_specs.pipeline_spec(Path(wan_path), "wan")
    assert (spec.hidden, spec.layers, spec.pixels_per_token, spec.vae_scale, spec.latent_channels,
            spec.embed_dim, spec.pooled_dim) == (32, 1, 8, 4, 4, 32, 0)
    assert model_specs.image_tokens(spec, 32) == 16 and model_specs.image_tokens(spec, 32, FRAMES) == 32
    assert sorted(spec.linears) == sorted(wan_linears(32, 64, 1, text_dim=32, freq_dim=32, out_channels=4))
    widths = load_script("scripts/build_wan.py")
    for size, published in (("1.3B", widths.WAN_1_3B), ("14B", widths.WAN_14B)):
        with torch.device("meta"):
            net = WanTransformer3DModel(**published, num_layers=widths.PUBLISHED_LAYERS[size])
        linears = sorted((k[: -len(".weight")], p.shape[1], p.shape[0]) for k, p in net.named_parameters()
                         if k.endswith(".weight") and p.ndim == 2)
        table = model_specs.PUBLISHED_PIPELINES[f"Wan-AI/Wan2.1-T2V-{size}-Diffusers"]
        assert sorted(cost_model.spec_linears(table)) == linears
        assert table.transformer_params == sum(p.numel() for p in net.parameters())
    cfg = family_checks.system_config(PRESET, wan_path, Path(wan_path) / "out", **SMALL)
    assert sampling_grids(cfg)["train"] == sd3_sigmas(3, 3.0).tolist()


def test_one_bf16_iteration_at_the_published_widths(real_width, tmp_path):
    """scripts/build_real_width.py's wan folder (Wan2.1-T2V-1.3B's widths, one block, one UMT5-XXL layer, the published
    video VAE): a bf16 iteration with LoRA on the preset's targets, CFG and DanceGRPO, 5 frames."""
    from cluster import model_specs

    path = real_width("wan")
    assert model_specs.pipeline_spec(Path(path), "wan").hidden == 1536
    model = {"family": "wan", "num_frames": FRAMES, "guidance_scale": 5.0,
             "lora": LoraSettings(rank=4, alpha=8, target_modules=TARGETS)}
    family_checks.one_bf16_iteration_at_published_width(
        path, model, {"name": "dance_grpo", "timestep_fraction": 0.6}, tmp_path, needs_gib=6.0, masked=False)


@pytest.mark.system
@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_trains_two_iterations_and_syncs_on_local_ray(local_ray, wan_path, tmp_path, lora):
    """5-D latents through rollout, the data plane, the learner and the sync; the final evaluation writes its still
    grid (frame strips) and one animated GIF per pictured prompt."""
    from PIL import Image

    over = SMALL if lora else {**SMALL, "model.lora.enabled": "false", "learner.learning_rate": 1e-4}
    cfg = family_checks.system_config(PRESET, wan_path, tmp_path, **over, **{"logging.eval_every": 1})
    family_checks.trains_and_syncs(cfg)
    gifs = sorted(tmp_path.rglob("*.gif"))
    assert gifs, sorted(p.name for p in tmp_path.rglob("*"))
    with Image.open(gifs[0]) as gif:
        assert gif.n_frames == FRAMES


@pytest.mark.system
def test_resumes_bit_exactly(local_ray, wan_path, tmp_path):
    family_checks.resumes_bit_exactly(PRESET, wan_path, tmp_path, **SMALL)
