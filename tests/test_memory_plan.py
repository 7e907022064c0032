"""The memory planner (cluster/memory_plan.py): its closed forms, the row counts it derives against the
real strategy, the spec it reads from safetensors headers, and `launch.py --dry-run` refusing a plan that
cannot fit, naming the keys to change."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import launch
from cluster import memory_plan as mp
from cluster import model_specs as ms
from cluster.config import REPO_ROOT, load_config

pytestmark = pytest.mark.unit

P = 1_000_000  # trainable parameters in the closed forms below
SPEC = ms.PipelineSpec(
    family="sd3", transformer_params=10 * P, hidden=64, layers=4, pixels_per_token=16, text_encoder_params={"te": P},
    vae_params=P, vae_fullres_channels=32, latent_channels=16, vae_scale=8, embed_dim=64, pooled_dim=32,
    clip_tokens=77, linears=(("blocks.0.attn.to_q", 64, 64), ("blocks.0.attn.to_k", 64, 128), ("blocks.0.ff.net.2", 256, 64)),
)  # fmt: skip


@pytest.mark.parametrize("ranks", [1, 4, 8])
def test_zero_stages_shard_optimizer_state_and_gradients_by_rank_count(ranks):
    """Adam keeps two fp32 moments (8 bytes) and, for bf16 weights, an fp32 master copy (4 bytes): whole at
    ZeRO-0, / ranks from ZeRO-1 on; gradients (fp32 accumulation, + the bf16 .grad below ZeRO-2) are
    partitioned from ZeRO-2 on."""
    whole = mp.optimizer_bytes(P, ranks, 0, "bf16")
    assert whole == {"adam moments (fp32)": 8 * P, "master weights (fp32)": 4 * P}
    for stage in (1, 2, 3):
        assert sum(mp.optimizer_bytes(P, ranks, stage, "bf16").values()) == pytest.approx(12 * P / ranks)
    assert sum(mp.optimizer_bytes(P, ranks, 3, "fp32").values()) == pytest.approx(8 * P / ranks)  # no master copy
    bucket = 5 * 10**8
    assert mp.gradient_bytes(P, ranks, 1, "bf16", bucket) == 6 * P and mp.gradient_bytes(P, ranks, 0, "fp32", bucket) == 4 * P
    # ZeRO-2/3: an fp32 partition, plus the bf16 gradients waiting in the reduce bucket (P < its elements).
    assert mp.gradient_bytes(P, ranks, 2, "bf16", bucket) == mp.gradient_bytes(P, ranks, 3, "bf16", bucket) == pytest.approx(
        4 * P / ranks + 2 * P)
    assert mp.gradient_bytes(P, ranks, 3, "bf16", P // 10) == pytest.approx(4 * P / ranks + 2 * (P // 10))
    # The step: ZeRO-2's flattened fp32 gradient partition, and unfused AdamW's sqrt(v) + eps (CPU only).
    assert mp.optimizer_step_bytes(P, ranks, 2, fused=True, bucket=bucket) == pytest.approx(4 * P / ranks)
    assert mp.optimizer_step_bytes(P, ranks, 2, fused=False, bucket=bucket) == pytest.approx(8 * P / ranks)
    assert mp.optimizer_step_bytes(P, ranks, 0, fused=False, bucket=bucket) == 4 * P
    # ZeRO-3 steps one sub-group (a bucket) of its partition at a time.
    assert mp.optimizer_step_bytes(P, ranks, 3, fused=False, bucket=P // 100) == pytest.approx(4 * (P // 100))


def test_reducing_a_bucket_costs_fp32_copies_of_it_with_several_ranks():
    # ZeRO-3: the fp32 cast and the reduce-scatter's flat buffer; ZeRO-2: the fp32 cast; one rank: nothing.
    assert mp.gradient_reduce_bytes(P, 2, 3, bucket=P // 10) == pytest.approx(8 * (P // 10))
    assert mp.gradient_reduce_bytes(P, 2, 2, bucket=10 * P) == pytest.approx(4 * P)
    assert mp.gradient_reduce_bytes(P, 1, 3, bucket=P) == mp.gradient_reduce_bytes(P, 2, 1, bucket=P) == 0


def test_the_bucket_size_reaches_deepspeed_and_the_plan():
    from learner.config import LearnerConfig
    from learner.engine import deepspeed_config

    zero = deepspeed_config(LearnerConfig(zero_stage=3, zero_bucket_elements=2_000_000), world_size=2)["zero_optimization"]
    assert zero["reduce_bucket_size"] == zero["allgather_bucket_size"] == zero["stage3_prefetch_bucket_size"] == 2_000_000
    assert zero["sub_group_size"] == 2_000_000


def test_lora_counts_rank_times_fan_in_plus_fan_out_of_matching_linears():
    # peft matches a target by the module name's last components: to_q and to_k, not ff.net.2.
    assert ms.lora_params(SPEC, ["to_q", "to_k"], rank=4) == 4 * (64 + 64) + 4 * (64 + 128)
    assert ms.lora_params(SPEC, ["attn.to_q"], rank=4) == 4 * 128
    assert ms.lora_params(dataclasses.replace(SPEC, linears=()), ["to_q", "to_k"], rank=4) == 2 * 4 * 4 * 2 * 64


# sd35_geneval as a split layout (the preset is hybrid): rollout actors and learner ranks on their own GPUs.
SPLIT = ["cluster.layout=split", "cluster.num_rollout_actors=8", "cluster.rollout_num_gpus=1", "cluster.learner_num_gpus=1"]


def _cfg(*overrides):
    return load_config(REPO_ROOT / "configs" / "sd35_geneval.yaml", [*SPLIT, "cluster.num_learner_ranks=4", *overrides])


def test_full_fine_tuning_holds_optimizer_state_for_the_whole_transformer_lora_for_its_adapters():
    lora = {t.label: t.bytes for t in mp.plan_learner(_cfg("learner.zero_stage=3"), SPEC)[0]}
    full = {t.label: t.bytes for t in mp.plan_learner(_cfg("learner.zero_stage=3", "model.lora.enabled=false"), SPEC)[0]}
    adapters = ms.lora_params(SPEC, _cfg().model.lora.target_modules, _cfg().model.lora.rank)
    assert lora["adam moments (fp32)"] == pytest.approx(8 * adapters / 4)
    assert full["adam moments (fp32)"] == pytest.approx(8 * SPEC.transformer_params / 4)
    assert full["master weights (fp32)"] == pytest.approx(4 * SPEC.transformer_params / 4)
    # beta > 0: full fine-tuning keeps a frozen reference copy; LoRA disables its adapters instead.
    assert full["reference copy of the transformer (full fine-tuning, beta > 0)"] == 2 * SPEC.transformer_params
    assert "LoRA adapters" in lora and not any("reference" in k for k in lora)


def test_a_learner_rank_holds_the_transformer_and_its_groups_prompt_embeddings_only():
    cfg = _cfg()  # 4 ranks
    rollout, _ = mp.plan_rollout(cfg, SPEC, prompts=3)
    learner, _ = mp.plan_learner(cfg, SPEC)
    weights = [t.label for t in learner if t.label.endswith("weights")]
    assert weights == ["transformer weights"] and "vae weights" in [t.label for t in rollout]
    # Each group ships its prompt's row and the negative prompt's (SD3's CFG); a rank gets 1/4 of the groups.
    groups = -(-cfg.prompts_per_iteration // 4)
    (shipped,) = [t for t in learner if t.label.startswith("prompt embeddings")]
    assert shipped.bytes == mp.prompt_embedding_bytes(SPEC, cfg.model.max_sequence_length, 2 * groups, 2) and shipped.host


def test_activations_per_row_from_tokens_hidden_and_layers():
    tokens = ms.image_tokens(SPEC, 512) + ms.text_tokens(SPEC, 128)
    assert tokens == (512 // 16) ** 2 + 77 + 128
    k, per = mp.TRAIN_ELEMENTS_PER_TOKEN_HIDDEN, tokens * SPEC.hidden * 2
    assert mp.train_activation_bytes(SPEC, tokens, 3, 2, checkpointing=False) == pytest.approx(3 * SPEC.layers * k * per)
    # Checkpointing keeps each block's input and recomputes one block at a time.
    assert mp.train_activation_bytes(SPEC, tokens, 3, 2, checkpointing=True) == pytest.approx(3 * (SPEC.layers + k) * per)


def test_g2rpo_rows_per_call_match_the_strategy():
    """The planner's largest G2RPO velocity call (the unit's `rollout_latents_per_call`) equals what the
    unit's strategy actually batches."""
    from algorithms import ALGORITHMS
    from algorithms.g2rpo import g2rpo_max_rows
    from models.config import SamplingConfig
    from models.sampling import sample_group
    from models.schedule import sigma_schedule

    unit = ALGORITHMS["g2rpo"](steps=[0, 2, 3, 5], granularities=[1, 2, 3])
    sampling = SamplingConfig(group_size=3, num_steps=8)
    rows = []

    def velocity(x, sigma):
        rows.append(x.shape[0])
        return torch.zeros_like(x)

    sample_group(unit, sampling, velocity, lambda n, generator: torch.randn(n, 1, 2, 2, generator=generator),
                 sigma_schedule("linear", sampling.num_steps, 3.0), generator=torch.Generator().manual_seed(0),
                 iteration=0)
    assert g2rpo_max_rows(3, 8, [0, 2, 3, 5], [1, 2, 3]) == unit.rollout_latents_per_call(sampling) == max(rows)


def test_the_planner_asks_the_algorithm_for_its_rows_images_and_host_copies():
    """G2RPO decodes G * |M| * |Lambda| images per group and its micro-batches share inputs; the forward-process
    family keeps an fp32 host copy of the sampling policy on each learner rank; Flow-GRPO neither."""
    from cluster.memory_plan import images_per_group, learner_inputs_per_micro_batch, rollout_rows_per_call

    flow = load_config(REPO_ROOT / "configs" / "shapes_flowgrpo.yaml")
    g2 = load_config(REPO_ROOT / "configs" / "shapes_g2rpo.yaml")
    nft = load_config(REPO_ROOT / "configs" / "shapes_nft.yaml")
    g, (m, lam) = g2.sampling.group_size, (len(g2.algorithm.steps), len(g2.algorithm.granularities))
    assert images_per_group(flow) == flow.sampling.group_size and images_per_group(g2) == g * m * lam
    assert learner_inputs_per_micro_batch(flow) == flow.learner.micro_batch_size
    assert learner_inputs_per_micro_batch(g2) < g2.learner.micro_batch_size
    assert rollout_rows_per_call(g2) > rollout_rows_per_call(flow)

    def device(cfg):
        return {t.label for t in mp.plan_learner(cfg, SPEC)[0] if not t.host}

    assert "sampling-policy weights (fp32)" in device(nft) - device(flow)  # learner/forward_process.py holds it there


def test_spec_of_the_shipped_model_counts_what_from_pretrained_loads():
    from diffusers import SD3Transformer2DModel

    folder = REPO_ROOT / "assets" / "models" / "shapes-sd3-tiny"
    spec = ms.pipeline_spec(folder, "sd3")
    transformer = SD3Transformer2DModel.from_pretrained(folder / "transformer")
    tensors = list(transformer.parameters()) + [b for _, b in transformer.named_buffers() if b is not None]
    assert spec.transformer_params == sum(t.numel() for t in tensors)
    assert spec.hidden == transformer.config.num_attention_heads * transformer.config.attention_head_dim
    assert spec.layers == transformer.config.num_layers


@pytest.mark.parametrize("preset, overrides, keys", [
    # SD3.5 on 48 GB GPUs: 18 rows of activations without checkpointing do not fit a hybrid worker's 7/8.
    ("sd35_geneval", ["cluster.gpu_memory_gb=48"], ["memory.hybrid_worker", "learner.micro_batch_size",
                                                     "model.gradient_checkpointing", "cluster.learner_num_gpus",
                                                     "cluster.gpu_memory_gb"]),
    # G2RPO's 192-image group decoded at once at 720 px.
    ("flux_g2rpo_hps", ["cluster.rollout_images_per_decode=null"], ["memory.hybrid_worker",
                                                                     "cluster.rollout_images_per_decode"]),
    # A 12B full fine-tune on one rank without ZeRO: 12 bytes of Adam state per parameter.
    ("flux_dancegrpo_hps", ["learner.zero_stage=1", "cluster.num_learner_ranks=1", "cluster.num_rollout_actors=1"],
     ["memory.hybrid_worker", "learner.zero_stage", "cluster.num_learner_ranks", "model.lora.enabled"]),
    # PickScore (CLIP-H, fp32) in a twentieth of a GPU.
    ("sd35_pickscore", [], ["memory.reward_actor_pickscore", "rewards.scorers[0].num_gpus_per_actor"]),
])  # fmt: skip
def test_dry_run_refuses_a_plan_that_cannot_fit_naming_the_keys(capsys, tmp_path, preset, overrides, keys):
    config = tmp_path / f"{preset}.yaml"  # rewards.scorers is a list, out of reach of key=value overrides
    text = (REPO_ROOT / "configs" / f"{preset}.yaml").read_text()
    config.write_text(text.replace("num_gpus_per_actor: 0.125", "num_gpus_per_actor: 0.05") if not overrides else text)
    argv = ["--config", str(config), "--dry-run", "--assume-resources", '{"CPU": 1024, "GPU": 64}', *overrides]
    assert launch.main(argv) == 1
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[ERROR]")]
    assert len(errors) == 1 and all(k in errors[0] for k in keys), errors


@pytest.mark.parametrize("rollout_actors", [4, 16])  # one or four colocated rollout actors per learner rank
def test_colocated_offload_counts_one_side_at_a_time(rollout_actors):
    common = ["cluster.async_mode=false", f"cluster.num_rollout_actors={rollout_actors}"]
    cfg = {name: _cfg(*common, *over) for name, over in [
        ("separate", []), ("colocated", ["cluster.colocate=true"]),
        ("offload", ["cluster.colocate=true", "cluster.colocate_offload=true"])]}
    rewards = [ms.RewardSpec(P)] * len(cfg["separate"].rewards.scorers)
    plans = {name: mp.plan_memory(c, SPEC, rewards, train_prompts=2, test_prompts=2) for name, c in cfg.items()}
    alone = {p.kind: p for p in plans["separate"]}
    learner, rollout = alone["learner rank"], alone["rollout actor"]
    colocated, offload = plans["colocated"][0], plans["offload"][0]
    per = rollout_actors // 4

    def kept(plan: mp.ActorPlan, *labels: str) -> float:  # what a side keeps while the other one works
        return sum(t.bytes for t in plan.terms if t.label.startswith(labels) and not t.host)

    # The learner's turn: it alone, plus the rollout actors' caches and latents; theirs: they alone, plus
    # the learner's adapters (its prompt embeddings are host memory). The bundle needs the larger turn, never both.
    training = learner.total + per * kept(rollout, "prompt cache", "trajectory latents")
    sampling = per * rollout.total + kept(learner, "LoRA adapters", "prompt embeddings")
    assert offload.total == pytest.approx(max(training, sampling))
    assert offload.total < colocated.total - min(learner.total, rollout.total) / 2
    assert offload.host_total > 0  # on a GPU the offloaded tensors wait in pinned host memory


def test_a_hybrid_worker_holds_the_pipeline_once_and_the_larger_of_its_transients():
    """cluster.layout=hybrid: one worker per learner rank holds the learner rank's terms plus the sampler's
    (text encoders, VAE, prompt cache, its groups' latents), the transformer and its adapters once, and of the
    sampling and the training transients only the largest (they run one after the other)."""
    hybrid = load_config(REPO_ROOT / "configs" / "sd35_geneval.yaml")
    split = _cfg("cluster.num_learner_ranks=8")
    assert hybrid.cluster.layout == "hybrid" and hybrid.cluster.num_learner_ranks == 8
    rewards = [ms.RewardSpec(P)] * len(hybrid.rewards.scorers)
    plans = mp.plan_memory(hybrid, SPEC, rewards, train_prompts=2, test_prompts=2)
    assert [p.kind for p in plans] == ["hybrid worker", "reward actor geneval"]
    worker = plans[0]
    labels = [t.label for t in worker.terms]
    for once in ("transformer weights", "te weights", "vae weights", "LoRA adapters", "adam moments (fp32)", "gradients"):
        assert labels.count(once) == 1, once
    alone = {p.kind: p for p in mp.plan_memory(split, SPEC, rewards, train_prompts=2, test_prompts=2)}
    learner, rollout = alone["learner rank"], alone["rollout actor"]
    groups = -(-hybrid.prompts_per_iteration // 8)
    sampler_only = sum(t.bytes for t in rollout.terms if t.label in ("te weights", "vae weights") or t.label.startswith("prompt cache"))
    latents = next(t.bytes for t in rollout.terms if t.label == "trajectory latents (fp32)")
    resident = sum(t.bytes for t in learner.terms if not t.host) + sampler_only + groups * latents
    largest = max(learner.peak_transient.bytes, rollout.peak_transient.bytes)
    assert worker.total == pytest.approx(resident + largest)
    assert worker.budget_bytes == pytest.approx(hybrid.cluster.learner_num_gpus * 80e9 - mp.GPU_RUNTIME_BYTES)
    # the reward actors take the rest of the same GPUs, each within its own share
    assert plans[1].budget_bytes == pytest.approx(hybrid.rewards.scorers[0].num_gpus_per_actor * 80e9 - mp.GPU_RUNTIME_BYTES)


def test_a_hybrid_worker_keeps_the_sampling_policy_on_its_device():
    """The forward-process family's fp32 copy of the sampling policy: where sampling swaps it in (the device)."""
    nft = load_config(REPO_ROOT / "configs" / "sd35_nft_geneval.yaml")
    (worker, *_) = mp.plan_memory(nft, SPEC, [ms.RewardSpec(P)], train_prompts=2, test_prompts=2)
    (policy,) = [t for t in worker.terms if t.label == "sampling-policy weights (fp32)"]
    assert not policy.host and policy.bytes == 4 * ms.lora_params(SPEC, nft.model.lora.target_modules, nft.model.lora.rank)
