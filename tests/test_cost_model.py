"""The cost model (cluster/cost_model.py): its closed forms, its FLOP counts against torch's FlopCounterMode
on tiny real models, the counts per iteration it asks the algorithm units for, and the busy shares it gives
the presets' layouts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import launch
from cluster import cost_model as cm
from cluster import model_specs as ms
from cluster.config import REPO_ROOT, load_config
from tests.script_loader import load_script

pytestmark = pytest.mark.unit

SHIPPED = REPO_ROOT / "assets" / "models" / "shapes-sd3-tiny"
SD35_PRESETS = sorted(p.stem for p in (REPO_ROOT / "configs").glob("sd35_*.yaml"))


def counted_by_torch(fn) -> float:
    """FlopCounterMode's total, attention through the math kernel (which it counts; the fused CPU one it does not)."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def linears_of(module: torch.nn.Module) -> tuple[tuple[str, int, int], ...]:
    """(name, in, out) of every 2-D weight, as cluster/model_specs.py reads them from safetensors headers."""
    return tuple((n[: -len(".weight")], p.shape[1], p.shape[0]) for n, p in module.named_parameters()
                 if n.endswith(".weight") and p.ndim == 2)  # fmt: skip


# ----------------------------------------------------------------------------- closed forms


def test_doubling_the_tokens_doubles_the_matmuls_and_quadruples_attention():
    counts = cm.TransformerCounts(
        per_row=7, image=11, text=13, joint=17, attentions=(("joint", 64), ("image", 32))
    )
    matmul, attention = cm.forward_parts(counts, image=100, text=20)
    assert matmul == 2 * (7 + 11 * 100 + 13 * 20 + 17 * 120)
    assert attention == 4 * 120**2 * 64 + 4 * 100**2 * 32
    matmul2, attention2 = cm.forward_parts(counts, image=200, text=40)
    assert matmul2 - 2 * 7 == pytest.approx(2 * (matmul - 2 * 7))  # the per-row modulation does not grow
    assert attention2 == pytest.approx(4 * attention)


def test_backward_is_twice_the_forward_for_full_fine_tuning_and_about_once_for_lora():
    matmul, attention, lora = 100.0, 30.0, 2.0
    forward = matmul + attention
    assert cm.train_flops(matmul, attention, 0.0, full=True, checkpointing=False) == pytest.approx(
        3 * forward
    )
    assert cm.train_flops(matmul, attention, 0.0, full=True, checkpointing=True) == pytest.approx(4 * forward)
    # LoRA: input gradients of every matmul (1x) and of attention (2x), weight gradients of the adapters only
    lora_step = cm.train_flops(matmul, attention, lora, full=False, checkpointing=False)
    assert lora_step == pytest.approx((forward + lora) + (matmul + lora + 2 * attention) + lora)
    assert (
        lora_step
        < 2.5 * (forward + lora)
        < cm.train_flops(matmul, attention, lora, full=True, checkpointing=False)
    )


def test_mmdit_weights_are_sorted_by_the_tokens_they_see():
    linears = [
        ("time_text_embed.timestep_embedder.linear_1", 4, 8), ("context_embedder", 5, 8), ("x_embedder", 3, 8),
        ("transformer_blocks.0.norm1.linear", 8, 48), ("transformer_blocks.0.attn.to_q", 8, 8),
        ("transformer_blocks.0.attn.add_q_proj", 8, 8), ("transformer_blocks.0.ff_context.net.2", 32, 8),
        ("transformer_blocks.0.attn2.to_q", 8, 8), ("single_transformer_blocks.0.proj_mlp", 8, 32),
        ("single_transformer_blocks.0.attn.to_q", 8, 8), ("proj_out", 8, 3),
    ]  # fmt: skip
    counts = cm.transformer_counts(linears)
    assert counts.per_row == 4 * 8 + 8 * 48
    assert counts.text == 5 * 8 + 8 * 8 + 32 * 8  # context embedder, add_q_proj, ff_context
    assert (
        counts.image == 3 * 8 + 8 * 8 + 8 * 8 + 8 * 3
    )  # x_embedder, to_q and attn2 of the dual block, proj_out
    assert counts.joint == 8 * 32 + 8 * 8  # the single-stream block sees every token
    # the dual block's joint attention, its image-only attn2 (SD3.5's MMDiT-X), the single block's joint one
    assert counts.attentions == (("joint", 8), ("image", 8), ("joint", 8))


def test_vae_decode_flops_grow_with_the_pixels():
    flops = [cm.vae_decode_flops((128, 256, 512, 512), 2, 16, r, mid_attention=False) for r in (256, 512)]
    assert flops[1] == pytest.approx(4 * flops[0])
    with_attention = [cm.vae_decode_flops((128, 256, 512, 512), 2, 16, r) for r in (256, 512)]
    assert (
        with_attention[1] > 4 * with_attention[0]
    )  # the mid block's attention over latent pixels is quadratic


# ----------------------------------------------------------------------------- counts against torch


def test_shipped_model_counts_match_torch():
    """The transformer's forward and its full fine-tuning step (with and without recompute) and the VAE decode
    of the shipped model: what the cost model counts is what torch counts (to 0.5%: the patch-embedding conv
    and the input gradient of the first layer are left out)."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel

    spec = ms.pipeline_spec(SHIPPED, "sd3")
    transformer = SD3Transformer2DModel.from_pretrained(SHIPPED / "transformer")
    rows, text, resolution = 3, 20, 32
    image = ms.image_tokens(spec, resolution)
    x = torch.randn(rows, 4, resolution // 4, resolution // 4)
    inputs = dict(hidden_states=x, timestep=torch.ones(rows), encoder_hidden_states=torch.randn(rows, text, 128),
                  pooled_projections=torch.randn(rows, 64))  # fmt: skip
    matmul, attention = cm.forward_parts(cm.transformer_counts(spec.linears), image, text)
    with torch.no_grad():
        assert counted_by_torch(lambda: transformer(**inputs)) / rows == pytest.approx(
            matmul + attention, rel=5e-3
        )
    for checkpointing in (False, True):
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        step = counted_by_torch(lambda: transformer(**inputs)[0].square().mean().backward()) / rows
        assert step == pytest.approx(cm.train_flops(matmul, attention, 0.0, full=True, checkpointing=checkpointing),
                                     rel=5e-3)  # fmt: skip
    vae = AutoencoderKL.from_pretrained(SHIPPED / "vae")
    conf = cm.vae_config_of(SHIPPED)
    with torch.no_grad():
        decode = counted_by_torch(lambda: vae.decode(x[:2]))
    assert decode / 2 == cm.vae_decode_flops(
        conf["block_out_channels"], conf["layers_per_block"], 4, resolution
    )


def test_lora_step_and_flux_forward_match_torch():
    from diffusers import SD3Transformer2DModel  # noqa: I001
    from peft import LoraConfig

    from tests.tiny_models import tiny_flux_pipeline

    spec = ms.pipeline_spec(SHIPPED, "sd3")
    targets = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.to_add_out"]
    transformer = SD3Transformer2DModel.from_pretrained(SHIPPED / "transformer").requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    rows, text = 2, 20
    inputs = dict(hidden_states=torch.randn(rows, 4, 8, 8), timestep=torch.ones(rows),
                  encoder_hidden_states=torch.randn(rows, text, 128), pooled_projections=torch.randn(rows, 64))  # fmt: skip
    step = counted_by_torch(lambda: transformer(**inputs)[0].square().mean().backward()) / rows
    matmul, attention = cm.forward_parts(cm.transformer_counts(spec.linears), 64, text)
    lora = cm.forward_parts(cm.lora_counts(spec.linears, targets, 4), 64, text)[0]
    assert lora > 0
    # a few input gradients autograd skips (before the first adapter) are counted: within 5%
    assert step == pytest.approx(
        cm.train_flops(matmul, attention, lora, full=False, checkpointing=False), rel=0.05
    )

    flux = tiny_flux_pipeline().transformer
    image, text = 64, 12
    inputs = dict(hidden_states=torch.randn(rows, image, 16), timestep=torch.ones(rows), guidance=torch.ones(rows),
                  pooled_projections=torch.randn(rows, 16), encoder_hidden_states=torch.randn(rows, text, 32),
                  txt_ids=torch.zeros(text, 3), img_ids=torch.zeros(image, 3))  # fmt: skip
    counts = cm.transformer_counts(linears_of(flux))
    assert counts.joint > 0 and {seq for seq, _ in counts.attentions} == {"joint"}  # double + single blocks
    with torch.no_grad():
        forward = counted_by_torch(lambda: flux(**inputs)) / rows
    assert forward == pytest.approx(sum(cm.forward_parts(counts, image, text)), rel=1e-3)


def test_clip_reward_counts_match_torch(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig(text_config={"hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2,
                                     "num_attention_heads": 2, "vocab_size": 99},
                        vision_config={"hidden_size": 40, "intermediate_size": 56, "num_hidden_layers": 3,
                                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
                        projection_dim=8)  # fmt: skip
    CLIPModel(config).save_pretrained(tmp_path / "clip")
    model = CLIPModel.from_pretrained(tmp_path / "clip")

    def score():
        with torch.no_grad():
            model.get_image_features(pixel_values=torch.randn(1, 3, 32, 32))
            model.get_text_features(input_ids=torch.randint(0, 99, (1, 77)))

    flops, exact = cm.reward_flops([str(tmp_path / "clip")])
    assert exact and counted_by_torch(score) == pytest.approx(flops, rel=0.02)  # the projections are left out
    assert cm.reward_flops([]) == (0.0, True)  # a programmatic scorer: no GPU work


def test_the_published_module_lists_are_the_published_architectures():
    """PUBLISHED_LINEARS (for a dry run with only the hub id) equals the diffusers models built on the meta device
    from scripts/build_real_width.py's published configs at their published depths."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    widths = load_script("scripts/build_real_width.py")
    with torch.device("meta"):
        built = {
            "stabilityai/stable-diffusion-3.5-medium": SD3Transformer2DModel(
                num_layers=24, dual_attention_layers=tuple(range(13)), **widths.SD35_TRANSFORMER),
            "black-forest-labs/FLUX.1-dev": FluxTransformer2DModel(
                num_layers=19, num_single_layers=38, **widths.FLUX_TRANSFORMER),
        }  # fmt: skip
    for hub, module in built.items():
        assert sorted(cm.expand_linears(cm.PUBLISHED_LINEARS[hub])) == sorted(linears_of(module)), hub
        assert cm.spec_linears(ms.PUBLISHED_PIPELINES[hub]) == cm.expand_linears(cm.PUBLISHED_LINEARS[hub])
    # SD3.5-Medium: two streams and adaLN, so 2 x params x tokens would count it twice over
    sd35 = cm.transformer_counts(
        cm.expand_linears(cm.PUBLISHED_LINEARS["stabilityai/stable-diffusion-3.5-medium"])
    )
    naive = (
        2
        * ms.PUBLISHED_PIPELINES["stabilityai/stable-diffusion-3.5-medium"].transformer_params
        * (1024 + 205)
    )
    assert naive / cm.forward_parts(sd35, 1024, 205)[0] > 2


# ----------------------------------------------------------------------------- counts per iteration


def _preset(name: str, *overrides: str):
    return load_config(REPO_ROOT / "configs" / f"{name}.yaml", list(overrides))


def test_iteration_counts_come_from_the_units_sampler_and_terms():
    from algorithms.g2rpo import g2rpo_nfe

    flow = cm.iteration_counts(_preset("sd35_geneval"))  # CFG, beta > 0, 9 of 10 steps trained
    g, steps = 24, 10
    assert (flow.nfe, flow.sampling_rows, flow.images) == (steps * g, 2 * steps * g, g)
    assert (flow.items, flow.rows_per_item, flow.frozen_passes) == (int(steps * 0.99) * g, 2, 1)
    g2 = _preset("flux_g2rpo_hps")
    counts = cm.iteration_counts(g2)
    a = g2.algorithm
    assert counts.nfe == g2rpo_nfe(g2.sampling.num_steps, a.steps, a.granularities, g2.sampling.group_size)
    assert counts.images == a.images_per_group(12)
    # a micro-batch holds the G branches of one x_k: one forward for 12 transitions
    assert counts.items == len(a.steps) * 12 and counts.rows_per_item == pytest.approx(1 / 12)
    nft = _preset(
        "sd35_nft_geneval"
    )  # forward process: K re-noised timesteps per sample; old policy + reference
    counts = cm.iteration_counts(nft)
    assert counts.items == nft.algorithm.train_timesteps * 24 and counts.frozen_passes == 2
    assert cm.iteration_counts(_preset("sd35_geneval", "learner.num_inner_epochs=2")).items == 2 * flow.items


# ----------------------------------------------------------------------------- layouts


def _report(name: str, *overrides: str) -> cm.CostReport:
    report = cm.estimate_for(_preset(name, *overrides))
    assert isinstance(report, cm.CostReport), report
    return report


def test_split_waits_between_phases_and_hybrid_works_through_them():
    report = _report("sd35_geneval")
    hybrid, split = report.chosen, report.other
    assert hybrid.layout.kind == "hybrid" and split.layout.kind == "split"
    for cost in (hybrid, split):  # the slowest device's sampling, then the slowest's training, then the sync
        assert cost.iteration == pytest.approx(sum(cost.phases.values()))
    assert hybrid.phases["weight sync"] == 0 and split.phases["weight sync"] > 0
    rollout = next(d for d in split.devices if any(r.startswith("rollout") for r in d.roles))
    learner = next(d for d in split.devices if any(r.startswith("learner") for r in d.roles))
    assert rollout.seconds.get("learner", 0) == 0 and learner.seconds.get("sampling", 0) == 0
    assert rollout.busy < split.iteration and learner.busy < split.iteration
    # the same work on the same 8 GPUs, none of them waiting: the iteration is shorter
    assert len(hybrid.devices) == len(split.devices) == 8 and hybrid.iteration < split.iteration


@pytest.mark.parametrize("name", SD35_PRESETS)
def test_hybrid_keeps_every_gpu_at_least_as_busy_as_split(name):
    report = _report(name)
    assert report.chosen.layout.kind == "hybrid"
    assert report.chosen.min_share >= report.other.min_share
    assert report.chosen.iteration < report.other.iteration
    # and the other way round: a split config's comparison is the hybrid one
    split = _report(name, "cluster.layout=split", "cluster.rollout_num_gpus=0.875", "cluster.num_learner_ranks=4",
                    "cluster.num_rollout_actors=4", "cluster.learner_num_gpus=0.875")  # fmt: skip
    assert split.chosen.layout.kind == "split" and split.other.layout.kind == "hybrid"
    assert split.other.min_share >= split.chosen.min_share


def test_the_geneval_preset_keeps_every_gpu_busy_for_90_percent_of_an_iteration():
    cost = _report("sd35_geneval").chosen
    assert len(cost.devices) == 8 and all(d.busy / cost.iteration >= 0.9 for d in cost.devices)
    # every GPU holds one worker and one GenEval reward actor (the eighth each worker leaves)
    assert all(sorted(r.rsplit(" ", 1)[0] for r in d.roles) == ["geneval reward actor", "hybrid worker"]
               for d in cost.devices)  # fmt: skip


def test_gradient_reduce_follows_the_zero_stage():
    """ZeRO-2 reduce-scatters after every micro-batch, ZeRO-0/1 all-reduce once per optimizer step."""
    report = _report("flux_dancegrpo_hps")  # full fine-tuning, micro_batch_size 1
    zero1 = _report("flux_dancegrpo_hps", "learner.zero_stage=1")
    reduce2 = report.chosen.devices[0].seconds["gradient reduce"]
    reduce1 = zero1.chosen.devices[0].seconds["gradient reduce"]
    lc = zero1.counts
    micro_batches = (16 // 8) * lc.items  # 2 groups per rank, one item per micro-batch
    steps = _preset("flux_dancegrpo_hps").learner.optimizer_steps_per_iteration
    assert reduce2 / reduce1 == pytest.approx(micro_batches / (2 * steps))


def test_dry_run_prints_the_cost_of_both_layouts(capsys):
    rc = launch.main(["--config", str(REPO_ROOT / "configs" / "sd35_geneval.yaml"), "--dry-run",
                      "--assume-resources", '{"CPU": 192, "GPU": 8}'])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    costs = [line for line in out.splitlines() if line.startswith("cost ")]
    assert len(costs) == 3 and costs[1].startswith("cost hybrid") and costs[2].startswith("cost split")
    assert f"utilisation {cm.UTILISATION:.2f}" in costs[0]
    shares = [int(m) for m in re.findall(r"\| (\d+)% \|", out)]
    assert shares and min(shares[:1]) >= 90


def test_a_cpu_config_has_no_cost_table(capsys):
    assert cm.dry_run_lines(load_config(Path(REPO_ROOT / "configs" / "shapes_nft.yaml"))) == [
        "cost model: no actor holds a GPU (the model times GPU layouts only)"
    ]
