"""The FLUX.2 families (models/family_flux2.py: `flux2` = FLUX.2-dev, `flux2_klein` = FLUX.2-klein) and SD3.5-Large
(the sd3 family's row with a bigger transformer), on tiny random pipelines built here from the published configs'
structure (scripts/build_flux2.py) and saved, loaded through `from_pretrained`:

- the family reproduces the pipelines: our Euler ODE on the family's grid, decoded, gives Flux2Pipeline's and
  Flux2KleinPipeline's own images for the same initial noise (packing, timestep, guidance embedding, true CFG,
  compute_empirical_mu, batch-norm and patchify on decode);
- a learner's transformer-only policy on the shipped embeddings has the full policy's velocity, bit for bit;
- a step-distilled klein is refused by the per-step algorithms unless model.allow_step_distilled;
- the planner's published numbers are the published architectures (meta-device builds) and its FLOP counts
  agree with torch's on FLUX.2's fused single blocks;
- the presets train on a local Ray (LoRA and full fine-tuning), sync every iteration and resume bit-exactly.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cluster.config import ConfigError
from models.config import LoraSettings, ModelConfig
from models.policy import Policy
from tests import family_checks as fc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from build_flux2 import OUT_LAYERS, TEXT, TRANSFORMERS, flux2_pipeline  # noqa: E402

pytestmark = pytest.mark.component

# Toy widths with the published structure: 3 stacked hidden states (joint = 3 x 16), 4 RoPE axes, a 2x VAE whose 4
# channels patchify to the transformer's 16; the text encoders keep the layer counts the pipelines read (31 / 28).
TINY = dict(
    transformer={"attention_head_dim": 8, "num_attention_heads": 2, "joint_attention_dim": 48,
                 "axes_dims_rope": (2, 2, 2, 2), "in_channels": 16, "timestep_guidance_channels": 16},
    text={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 8},
    vision={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "head_dim": 8,
            "image_size": 28},
    vae={"block_out_channels": (8, 8), "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 4,
         "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2},
)  # fmt: skip
# dev's system message and chat template take ~40 of the padded tokens: leave room for the prompt.
SEQ = {"flux2": 64, "flux2_klein": 32}
PROMPTS = ["a photo of a red circle", "a cat sitting on a wooden table"]


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    """Saved tiny pipelines: FLUX.2-dev, klein (base: CFG) and a step-distilled klein."""
    out = {}
    for name, variant, distilled in (("dev", "dev", False), ("klein", "klein-4b", False), ("distilled", "klein-4b", True)):
        folder = tmp_path_factory.mktemp(f"flux2-{name}")
        flux2_pipeline(variant, double=1, single=1, text_layers=max(OUT_LAYERS[variant]) + 1, distilled=distilled,
                       **TINY).save_pretrained(folder)
        out[name] = str(folder)
    return out


def _model(paths, name: str, **over) -> ModelConfig:
    family = "flux2" if name == "dev" else "flux2_klein"
    return ModelConfig(**{"path": paths[name], "family": family, "resolution": 32, "max_sequence_length": SEQ[family],
                          "guidance_scale": 1.0, **over})


# ----------------------------------------------------------------------------- the family is the pipeline


@pytest.mark.parametrize("name, guidance", [("dev", 3.5), ("klein", 3.0), ("klein", 1.0)])
def test_euler_on_the_familys_grid_decodes_to_the_pipelines_own_images(paths, name, guidance):
    """Flux2Pipeline(...) / Flux2KleinPipeline(...) with our initial noise as `latents` against Policy: the same
    grid, velocity (guidance embedding for dev, CFG with the empty negative prompt for klein) and decode."""
    torch.manual_seed(0)
    policy = Policy.from_config(_model(paths, name, guidance_scale=guidance))
    steps = 4
    x = policy.initial_noise(1, torch.Generator().manual_seed(3))
    sigmas = policy.sigmas(steps, shift=3.0, shift_mode="resolution")
    v = policy.velocity_fn(PROMPTS[0])
    with torch.no_grad():
        z = x
        for i in range(steps):  # the scheduler's Euler step: x + (sigma_next - sigma) v
            z = z + (sigmas[i + 1] - sigmas[i]) * v(z, sigmas[i])
        ours = policy.decode(z).numpy().astype(np.float32) / 255
        theirs = policy.pipe(prompt=PROMPTS[0], height=32, width=32, num_inference_steps=steps, guidance_scale=guidance,
                             latents=x.clone(), max_sequence_length=policy.cfg.max_sequence_length, output_type="np").images
    assert torch.allclose(torch.from_numpy(policy.pipe.scheduler.sigmas.numpy()).float(), sigmas, atol=1e-6)
    assert np.abs(ours - theirs).max() <= 1.5 / 255  # uint8 rounding of the same image
    assert policy.family.rows_per_sample(guidance) == (2 if name == "klein" and guidance != 1 else 1)


def test_the_schedule_is_flux2s_empirical_shift():
    from build_flux2 import SCHEDULER
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

    from models.families import family_of
    from models.family_flux2 import empirical_mu

    for tokens, steps in ((64, 4), (576, 8), (1024, 28), (4096, 50), (6400, 8)):  # 6400: the 200-step fit alone
        assert empirical_mu(tokens, steps) == pytest.approx(compute_empirical_mu(tokens, steps), abs=1e-12)
        sc = FlowMatchEulerDiscreteScheduler(**SCHEDULER)
        sc.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=compute_empirical_mu(tokens, steps))
        ours = family_of("flux2_klein").resolution_sigmas(steps, tokens, {})
        torch.testing.assert_close(ours, sc.sigmas.float(), rtol=0, atol=1e-6)
    # FLUX.1's mu would be another grid: the family's own, not the scheduler config's
    flux1 = family_of("flux").resolution_sigmas(8, 1024, {})
    assert not torch.allclose(family_of("flux2").resolution_sigmas(8, 1024, {}), flux1)


@pytest.mark.parametrize("name, guidance, lora", [("dev", 4.0, True), ("klein", 2.5, True), ("klein", 2.5, False)])
def test_a_learners_velocity_on_the_shipped_embeddings_is_the_encoders(paths, name, guidance, lora):
    """What a learner rank (transformer only) computes from a group's shipped conditioning equals what a policy
    with the text encoder computes from the prompt, bit for bit; klein's CFG ships the negative prompt too."""
    from common.data_plane import LearnerPayload, strip
    from models.types import PromptEmbeds
    from tests.test_strategies import cfg_for, run

    settings = LoraSettings(rank=4, alpha=8) if lora else LoraSettings(enabled=False)
    model = _model(paths, name, guidance_scale=guidance, lora=settings)
    torch.manual_seed(0)
    full, learner = Policy.from_config(model), Policy.from_config(model, transformer_only=True)
    assert [type(m).__name__ for m in learner.modules()] == ["Flux2Transformer2DModel"]
    assert learner.latent_shape(2) == full.latent_shape(2) == (2, 16, 8, 8)
    fc.perturb(full)
    learner.load_trainable(full.export_trainable())
    shipped = []
    for prompt in PROMPTS:  # each group's conditioning through its payload (common/data_plane.py)
        record = replace(run(cfg_for("flow_grpo", group_size=2, num_steps=2)), conditioning=full.conditioning(prompt))
        shipped.append(LearnerPayload.of(record).restore(strip(record)).conditioning)
    assert shipped[0].pooled.shape == (1, 0) and shipped[0].mask is None  # no pooled text, fixed-length padding
    assert (shipped[0].negative is not None) == (name == "klein")
    x = full.initial_noise(2, torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.9, 0.4])
    own = full.velocity_fn(PROMPTS)(x, sigma)
    assert not torch.allclose(own[0], full.velocity_fn(PROMPTS[::-1])(x, sigma)[0])  # the prompt reaches it
    assert torch.equal(learner.velocity(x, sigma, PromptEmbeds.cat(shipped)), own)
    if lora:
        assert torch.equal(learner.velocity(x, sigma, PromptEmbeds.cat(shipped), reference=True),
                           full.reference_velocity_fn(PROMPTS)(x, sigma))


def test_the_presets_lora_targets_adapt_flow_factorys_modules(paths):
    """Flow-Factory's default list: 12 Linears per double block and, of a single block, only to_qkv_mlp_proj (its
    "attn.to_out.0" names no module there: a single block's to_out is a Linear)."""
    from cluster.config import load_config

    targets = load_config(Path(__file__).resolve().parents[1] / "configs" / "flux2_klein_nft_pickscore.yaml").model.lora
    policy = Policy.from_config(_model(paths, "klein", lora=targets.model_copy(update={"rank": 4, "alpha": 8})))
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in policy.transformer.named_parameters() if ".lora_A." in n}
    assert len([n for n in adapted if n.startswith("transformer_blocks.0.")]) == 12
    assert adapted - {n for n in adapted if n.startswith("transformer_blocks.")} == {
        "single_transformer_blocks.0.attn.to_qkv_mlp_proj"}


# ----------------------------------------------------------------------------- step distillation


def test_a_step_distilled_klein_is_refused_for_per_step_algorithms_only(paths, tmp_path):
    from cluster.config import REPO_ROOT, load_config

    dev = REPO_ROOT / "configs" / "flux2_dev_grpo_pickscore.yaml"  # a per-step unit
    nft = REPO_ROOT / "configs" / "flux2_klein_nft_pickscore.yaml"  # a forward-process unit
    klein = ["model.family=flux2_klein", "model.guidance_scale=1", "model.max_sequence_length=32"]
    with pytest.raises(ConfigError, match=r"is_distilled.*model.allow_step_distilled=true"):
        load_config(dev, [f"model.path={paths['distilled']}", *klein])
    assert load_config(dev, [f"model.path={paths['distilled']}", *klein, "model.allow_step_distilled=true"])
    assert load_config(dev, [f"model.path={paths['klein']}", *klein])  # the undistilled base
    assert load_config(nft, [f"model.path={paths['distilled']}"])  # trains on final samples
    with pytest.raises(ConfigError, match="allow_step_distilled"):  # the published 4-step model, by its hub id
        load_config(dev, ["model.path=black-forest-labs/FLUX.2-klein-4B", *klein])
    # its pipeline ignores guidance, so CFG is refused at load time instead of silently run
    for transformer_only in (False, True):  # a learner rank's load keeps the pipeline's is_distilled too
        with pytest.raises(ValueError, match="step-distilled FLUX.2-klein"):
            Policy.from_config(_model(paths, "distilled", guidance_scale=2.0), transformer_only=transformer_only)


# ----------------------------------------------------------------------------- the planner's terms


def test_the_published_specs_are_the_published_architectures():
    """PUBLISHED_PIPELINES / PUBLISHED_LINEARS (a dry run with only the hub id) against the diffusers and transformers
    models built on the meta device from scripts/build_flux2.py's and build_real_width.py's published configs."""
    from build_flux2 import PIXTRAL, _text_encoder
    from diffusers import AutoencoderKLFlux2, Flux2Transformer2DModel, SD3Transformer2DModel

    import cluster.cost_model as cm
    import cluster.model_specs as ms
    from tests.script_loader import load_script
    from tests.test_cost_model import linears_of

    widths = load_script("scripts/build_real_width.py")
    hubs = {"dev": "black-forest-labs/FLUX.2-dev", "klein-4b": "black-forest-labs/FLUX.2-klein-base-4B",
            "klein-9b": "black-forest-labs/FLUX.2-klein-9B"}
    saved = lambda m: sum(t.numel() for t in {id(t): t for t in m.state_dict().values()}.values())  # noqa: E731
    with torch.device("meta"):
        vae = saved(AutoencoderKLFlux2())
        for variant, hub in hubs.items():
            spec, transformer = ms.PUBLISHED_PIPELINES[hub], Flux2Transformer2DModel(**TRANSFORMERS[variant])
            encoder = _text_encoder(variant, 131072 if variant == "dev" else 151936, TEXT[variant], PIXTRAL)
            tied = sum(p.numel() for p in encoder.parameters())  # a tied lm_head is saved once
            assert (spec.transformer_params, spec.text_encoder_params["text_encoder"], spec.vae_params) == (
                saved(transformer), tied, vae), hub
            assert spec.hidden == transformer.inner_dim and spec.embed_dim == TRANSFORMERS[variant]["joint_attention_dim"]
            assert sorted(cm.spec_linears(spec)) == sorted(linears_of(transformer)), hub
        large = SD3Transformer2DModel(num_layers=38, **widths.SD35_LARGE_TRANSFORMER)
        spec = ms.PUBLISHED_PIPELINES["stabilityai/stable-diffusion-3.5-large"]
        assert spec.transformer_params == saved(large) and spec.hidden == 2432 and spec.layers == 38
        assert sorted(cm.spec_linears(spec)) == sorted(linears_of(large))


def test_flux2_flop_counts_match_torch(paths):
    """The cost model sorts FLUX.2's shared modulations as per-row and counts the fused single blocks' attention."""
    from diffusers import Flux2Transformer2DModel

    import cluster.cost_model as cm
    from tests.test_cost_model import counted_by_torch, linears_of

    transformer = Flux2Transformer2DModel.from_pretrained(Path(paths["dev"]) / "transformer").requires_grad_(False)
    rows, image, text = 2, 64, 12
    h = torch.randn(rows, image, 16)
    inputs = dict(hidden_states=h, timestep=torch.ones(rows), guidance=torch.ones(rows),
                  encoder_hidden_states=torch.randn(rows, text, 48), img_ids=torch.zeros(image, 4),
                  txt_ids=torch.zeros(text, 4))  # fmt: skip
    counts = cm.transformer_counts(linears_of(transformer))
    assert counts.per_row > 0 and len(counts.attentions) == 2  # one double, one single block
    with torch.no_grad():
        forward = counted_by_torch(lambda: transformer(**inputs)) / rows
    assert forward == pytest.approx(sum(cm.forward_parts(counts, image, text)), rel=1e-3)


# ----------------------------------------------------------------------------- the presets on a local Ray


def _system(preset: str, path: str, out: Path, **over):
    family = "flux2" if "dev" in preset else "flux2_klein"
    extra = {"model.max_sequence_length": SEQ[family], "algorithm.window_range": "[1,3]"} if family == "flux2" else {}
    return fc.system_config(preset, path, out, **{**extra, **over})


@pytest.mark.system
def test_klein_nft_trains_and_syncs_with_full_finetuning(local_ray, paths, tmp_path):
    """DiffusionNFT samples with its EMA ("old") policy: after every iteration the rollout actor holds the learner's
    sampling weights (export_sampling_weights), the whole transformer here, and both moved."""
    from cluster.trainer import Trainer

    cfg = _system("flux2_klein_nft_pickscore", paths["klein"], tmp_path, **{"model.lora.enabled": "false"})
    seen = []
    with Trainer(cfg) as trainer:
        trained = fc._digest(trainer.learners[0], "export_weights")

        def stop(metrics: dict) -> bool:
            assert np.isfinite(metrics["policy/loss"])
            seen.append((fc._digest(trainer.learners[0], "export_sampling_weights"), fc._digest(trainer.rollouts[0], "weights")))
            return False

        sampled = fc._digest(trainer.rollouts[0], "weights")
        trainer.train(stop=stop)
        assert fc._digest(trainer.learners[0], "export_weights") != trained
    assert len(seen) == cfg.iterations and all(learner == rollout for learner, rollout in seen)
    assert seen[-1][1] != sampled


@pytest.mark.system
def test_dev_grpo_trains_syncs_and_resumes_bit_exactly(local_ray, paths, tmp_path):
    """LoRA on the per-step unit: every iteration's sync reaches the rollout actor, and 1 + resume + 1 = 2."""
    fc.trains_and_syncs(_system("flux2_dev_grpo_pickscore", paths["dev"], tmp_path / "synced"))
    over = {"model.max_sequence_length": SEQ["flux2"], "algorithm.window_range": "[1,3]"}
    fc.resumes_bit_exactly("flux2_dev_grpo_pickscore", paths["dev"], tmp_path, **over)


@pytest.mark.system
def test_the_device_checks_family_row_passes_on_cpu(local_ray, paths, tmp_path):
    """scripts/device_check.py --family (device_check.sh's FAMILY): klein's preset trains, evaluates and resumes
    bit-exactly; a FAMILY the script does not know stops it with exit status 2."""
    import subprocess

    from tests.script_loader import load_script

    dc = load_script("scripts/device_check.py")
    assert [c.label for c in dc.matrix(flux=False, families=("flux2", "flux2_klein"), sd35=False)] == [
        "flux2_grpo:hybrid", "flux2_klein_nft:hybrid"]
    assert dc.main(["--family", f"flux2_klein={paths['klein']}", "--output-dir", str(tmp_path / "out"),
                    "model.lora.rank=4", "model.lora.alpha=8"]) == 0
    assert "flux2_klein_nft | hybrid" in (tmp_path / "out" / "device_check.txt").read_text()
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run(["bash", str(root / "scripts" / "device_check.sh"), str(tmp_path / "sh")], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "FAMILY": "flux3", "DEVICE_CHECK_CPU": "1"})
    assert proc.returncode == 2 and "FAMILY=flux3: choose" in proc.stderr


# ----------------------------------------------------------------------------- at the published widths


def _available_gib() -> float:
    for line in open("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("inf")


# bf16 LoRA, the learner and a rollout worker in this process: two transformers (FLUX.2-dev's 1 + 1 blocks: 2.3 B
# parameters, 4.6 GB each), the narrowed text encoder and the VAE.
NEEDS_GIB = {"sd35l": 6.0, "flux2": 13.0, "flux2_klein": 5.0}


@pytest.mark.parametrize("family", sorted(NEEDS_GIB))
def test_one_bf16_iteration_at_published_widths(real_width, tmp_path, family):
    """tests/test_real_width.py's iteration (rollout, reward, update, sync, checkpoint) on SD3.5-Large and FLUX.2."""
    from algorithms import ALGORITHMS
    from learner.advantages import grpo_advantages
    from learner.config import LearnerConfig
    from learner.engine import free_port
    from learner.worker import LearnerWorker, TrainGroup
    from models.config import SamplingConfig
    from rollout.worker import GroupRequest, RolloutWorker

    if _available_gib() < NEEDS_GIB[family]:
        (pytest.fail if os.environ.get("CI") else pytest.skip)(
            f"{family} at published width needs ~{NEEDS_GIB[family]:.0f} GiB free, {_available_gib():.1f} available")
    targets = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.to_add_out"]
    targets += ["attn.to_qkv_mlp_proj"] if family != "sd35l" else []
    kind, guidance, seq, shift = {"sd35l": ("sd3", 4.5, 8, "static"), "flux2": ("flux2", 4.0, 48, "resolution"),
                                  "flux2_klein": ("flux2_klein", 2.0, 24, "resolution")}[family]
    model = ModelConfig(path=real_width(family), family=kind, dtype="bfloat16", resolution=32, guidance_scale=guidance,
                        max_sequence_length=seq, lora=LoraSettings(rank=4, alpha=8, target_modules=targets))
    sampling, algorithm = SamplingConfig(group_size=2, num_steps=2, shift_mode=shift), ALGORITHMS["flow_grpo"]()
    learner_cfg = LearnerConfig(precision="bf16", zero_stage=1, micro_batch_size=2, learning_rate=1e-5)
    learner = LearnerWorker(model, sampling, learner_cfg, algorithm=algorithm, seed=0)
    learner.setup("127.0.0.1", free_port())
    rollout = RolloutWorker(model, sampling, algorithm=algorithm, torch_threads=2, precision="bf16", rows_per_forward=4)
    c = learner.policy.transformer.config
    assert c.num_attention_heads * c.attention_head_dim == {"sd35l": 2432, "flux2": 6144, "flux2_klein": 3072}[family]
    res = rollout.rollout([GroupRequest(0, "a photo of a red circle", {}, seed=1, iteration=0)])[0]
    r = res.rollout
    rewards = torch.from_numpy(res.images.reshape(len(res.images), -1).mean(1).astype(np.float32))
    group = TrainGroup(res.request.prompt, r, grpo_advantages(rewards, r.reward_group, r.image_sample_id, r.num_samples),
                       torch.ones(r.num_samples, dtype=torch.bool), 0)
    metrics = learner.train([group], iteration=0)
    assert np.isfinite(metrics["policy/loss"]) and abs(metrics["learner/first_minibatch_ratio_mean"] - 1.0) < 1e-2
    assert rollout.load_weights(learner.export_weights(), learner.get_version())["digest"] == learner.weights_digest()
