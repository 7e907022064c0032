"""Presets and prompt sets: every configs/*.yaml loads and carries its paper's settings; the shipped
OCR / PickScore / GenEval prompt sets are what scripts/make_text_prompts.py writes; plain JSONL and
.txt prompt files load, and their errors name file:line and the field."""

import json
from pathlib import Path

import pytest

from algorithms.forward_process import ForwardProcessAlgorithm
from cluster.config import load_config
from rewards.ocr import ocr_target
from rewards.prompts import load_prompts
from tests.script_loader import load_script

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "configs").glob("*.yaml"))
ASSETS = ROOT / "assets" / "prompts"
make_text_prompts = load_script("scripts/make_text_prompts.py")

SHAPES = ["shapes_flowgrpo", "shapes_flowgrpo_fast", "shapes_dancegrpo", "shapes_mixgrpo", "shapes_g2rpo", "shapes_grpo_guard",
          "shapes_flow_dppo"]
SD35 = {"sd35_geneval": ("geneval", 0.04), "sd35_ocr": ("ocr", 0.04), "sd35_pickscore": ("pickscore", 0.01)}
FORWARD_SHAPES = ["shapes_nft", "shapes_awm"]
FORWARD_SD35 = {  # preset: (algorithm, scorer, nft_beta, old-policy decay (flat, rate, max), K, T)
    "sd35_nft_geneval": ("diffusion_nft", "geneval", 1.0, (0, 1e-3, 0.5), 9, 10),
    "sd35_nft_ocr": ("diffusion_nft", "ocr", 0.1, (75, 7.5e-3, 0.999), 9, 10),
    "sd35_nft_pickscore": ("diffusion_nft", "pickscore", 1.0, (0, 1e-3, 0.5), 9, 10),
    "sd35_awm_pickscore": ("awm", "pickscore", 1.0, (0, 1e-3, 0.5), 6, 14),
}
# The 2026 per-step units on SD3.5 (docs/fidelity.md): preset -> the reference's values
# (algorithm, guidance, G, trained steps, clip range or KL-mask threshold, beta)
PER_STEP_2026_SD35 = {
    "sd35_grpo_guard_pickscore": ("grpo_guard", 4.5, 24, 9, 1e-4, 0.01),  # Flow-Factory on flow_grpo's preset
    "sd35_flow_dppo_pickscore": ("flow_dppo", 1.0, 16, 3, 1e-5, 0.0),  # UniRL FlowDPPO/config.yaml
}
# The 2026 forward-process units: on the shapes world the default preset's task, model and budget; on SD3.5
# the reference's values (docs/fidelity.md): preset -> (algorithm, G, K, lr, learner.beta, LoRA rank)
FORWARD_2026_SHAPES = ["shapes_elbo", "shapes_dgpo"]
FORWARD_2026_SD35 = {
    "sd35_elbo_geneval": ("elbo_pg", 24, 9, 3e-4, 1e-4, 32),  # 2602.04663 sd3_geneval_pepg.sh
    "sd35_dgpo_geneval": ("dgpo", 16, 4, 3e-4, 0.02, 64),  # Luo-Yihong/DGPO dgpo_wocfg on geneval_sd3_4gpu
}
# The families users train now (docs/fidelity.md): preset -> the reference's (family, algorithm, scorer, T, guidance,
# prompts x G per iteration, LoRA rank)
NEW_FAMILIES = {
    "qwen_image_grpo_ocr": ("qwen_image", "flow_grpo_fast", "ocr", 10, 4.0, (32, 16), 64),  # verl-omni
    "qwen_image_nft_pickscore": ("qwen_image", "diffusion_nft", "pickscore", 12, 1.0, (48, 16), 64),  # UniRL
    "z_image_grpo_pickscore": ("z_image", "flow_grpo_fast", "pickscore", 6, 1.0, (48, 16), 64),  # Flow-Factory
    "wan_dancegrpo_video": ("wan", "dance_grpo", "video_clipscore", 20, 5.0, (8, 8), 64),  # Pref-GRPO's Wan2.1 LoRA run
}
# FLUX.2 and SD3.5-Large: preset -> (family, model.path, algorithm, T, guidance, G, LoRA rank, scorers)
FLUX2_SD35L = {
    "flux2_dev_grpo_pickscore": ("flux2", "black-forest-labs/FLUX.2-dev", "flow_grpo_fast", 8, 4.0, 16, 64,
                                 ["clipscore", "pickscore"]),
    "flux2_klein_nft_pickscore": ("flux2_klein", "black-forest-labs/FLUX.2-klein-base-4B", "diffusion_nft", 8, 1.0, 16, 64,
                                  ["pickscore"]),
    "sd35l_grpo_geneval": ("sd3", "stabilityai/stable-diffusion-3.5-large", "flow_grpo", 10, 4.5, 24, 32, ["geneval"]),
}
FLUX = {  # preset: (algorithm, T, lr)
    "flux_dancegrpo_hps": ("dance_grpo", 16, 1e-5),
    "flux_mixgrpo_hps": ("mix_grpo", 25, 1e-5),
    "flux_g2rpo_hps": ("g2rpo", 16, 2e-6),
}


def preset(name):
    return load_config(ROOT / "configs" / f"{name}.yaml")


def test_every_preset_is_listed_loads_and_is_named_after_its_file():
    assert {p.stem for p in PRESETS} == (set(SHAPES) | set(SD35) | set(FLUX) | set(FORWARD_SHAPES) | set(FORWARD_SD35)
                                         | set(PER_STEP_2026_SD35) | set(FORWARD_2026_SHAPES) | set(FORWARD_2026_SD35)
                                         | {"sd35_pickscore_fast", "sd35_geneval2"} | set(NEW_FAMILIES) | set(FLUX2_SD35L))
    for path in PRESETS:
        assert load_config(path).name == path.stem


@pytest.mark.parametrize("name", SHAPES[1:])
def test_shapes_presets_share_task_model_and_budget_with_flowgrpo(name):
    base, cfg = preset("shapes_flowgrpo"), preset(name)
    for section in ("model", "data", "cluster"):
        assert getattr(cfg, section) == getattr(base, section), section
    assert (cfg.iterations, cfg.seed, cfg.rewards.scorers) == (base.iterations, base.seed, base.rewards.scorers)
    assert (cfg.sampling.group_size, cfg.sampling.num_steps) == (8, 10)
    budget = ("learning_rate", "optimizer_steps_per_iteration", "micro_batch_size")
    assert [getattr(cfg.learner, k) for k in budget] == [getattr(base.learner, k) for k in budget] == [3e-4, 4, 32]


@pytest.mark.parametrize("name", FORWARD_SHAPES)
def test_forward_process_shapes_presets_share_task_and_model_with_flowgrpo(name):
    base, cfg = preset("shapes_flowgrpo"), preset(name)
    # the same model; the main job samples and trains it CFG-free (DiffusionNFT's way, see the preset)
    assert cfg.model.model_copy(update={"guidance_scale": base.model.guidance_scale}) == base.model
    assert cfg.model.guidance_scale == (1.0 if name == "shapes_nft" else base.model.guidance_scale)
    # two one-thread rollout actors (both cores busy while the learner waits), quarter-CPU reward actors
    assert cfg.cluster.model_copy(update={"num_rollout_actors": 1}) == base.cluster and cfg.cluster.num_rollout_actors == 2
    assert [s.name for s in cfg.rewards.scorers] == [s.name for s in base.rewards.scorers]
    assert all(s.num_cpus_per_actor == 0.25 for s in cfg.rewards.scorers)
    assert sum(s.num_cpus_per_actor for s in cfg.rewards.scorers) + 2 * cfg.cluster.rollout_num_cpus \
        + cfg.cluster.learner_num_cpus == 2.0  # what `ray start --head` declares on a 2-core laptop
    # the same prompts, images per iteration and evaluation; tags take turns (the main job's measured choice)
    assert cfg.data.prompt_order == "tag_balanced"
    assert cfg.data.model_copy(update={"prompt_order": base.data.prompt_order, "tag_weights": {},
                                       "mirror_position_prompts": False}) == base.data
    assert cfg.seed == base.seed
    assert cfg.algorithm.name == {"shapes_nft": "diffusion_nft", "shapes_awm": "awm"}[name]
    assert (cfg.sampling.group_size, cfg.sampling.num_steps) == (8, 10)
    assert isinstance(cfg.algorithm, ForwardProcessAlgorithm) and cfg.learner.beta == 0.0  # no reference forward (see the preset)
    # both decay cosine to a tenth from 3e-4 (AWM diverged at 5e-4; DiffusionNFT's CFG-free run, see the presets)
    assert (cfg.learner.learning_rate, cfg.learner.optimizer_steps_per_iteration) == (3e-4, 2)
    assert (cfg.learner.lr_schedule, cfg.learner.lr_final_fraction) == ("cosine", 0.1)
    # the main job trains on the strict verdict (partial credit collapsed the layouts, see the preset)
    assert cfg.rewards.scorers[0].options["reward"] == ("strict" if name == "shapes_nft" else "partial")
    # the main job spends its rollouts on the tags whose groups still disagree (see the preset)
    assert cfg.data.tag_weights == ({"position": 2, "counting": 3, "color_attr": 3, "two_object": 2}
                                    if name == "shapes_nft" else {})
    # and trains each relation prompt beside its opposite layout (see the preset)
    assert cfg.data.mirror_position_prompts == (name == "shapes_nft")
    if name == "shapes_nft":  # the held-back sampling policy that lets 480 iterations run (see the preset)
        a = cfg.algorithm
        assert (a.old_policy, a.old_policy_decay_flat, a.old_policy_decay_rate, a.old_policy_decay_max) == (
            "ema", 0, 3e-3, 0.9)
        assert cfg.iterations == 480


@pytest.mark.parametrize("name", FORWARD_SD35)
def test_sd35_forward_process_presets_carry_their_papers_settings(name):
    algorithm, scorer, nft_beta, decay, k, steps = FORWARD_SD35[name]
    cfg = preset(name)
    lc, a = cfg.learner, cfg.algorithm
    assert (a.name, cfg.rewards.scorers[0].name, a.train_timesteps, cfg.sampling.num_steps) == (algorithm, scorer, k, steps)
    assert cfg.model.guidance_scale == 1.0 and isinstance(a, ForwardProcessAlgorithm)  # CFG-free
    assert (lc.learning_rate, lc.beta, cfg.model.lora.rank, cfg.model.lora.alpha) == (3e-4, 1e-4, 32, 64)
    if algorithm == "diffusion_nft":
        assert (a.nft_beta, a.old_policy, a.solver, lc.adv_clip) == (nft_beta, "ema", "dpm", 5.0)
        assert (a.old_policy_decay_flat, a.old_policy_decay_rate, a.old_policy_decay_max) == decay
        assert cfg.data.images_per_iteration == 48 * 24 and lc.ema_decay == 0.9
    else:
        assert (a.weighting, a.ghuber_power, lc.clip_range, lc.adv_clip) == ("ghuber", 0.25, 1.0, 1.0)
        assert a.old_policy == "current" and cfg.data.images_per_iteration == 48 * 16


@pytest.mark.parametrize("name", FORWARD_2026_SHAPES)
def test_2026_forward_process_shapes_presets_are_the_default_preset_but_for_the_algorithm(name):
    base, cfg = preset("shapes_nft"), preset(name)
    for section in ("model", "sampling", "data", "cluster", "rewards"):
        assert getattr(cfg, section) == getattr(base, section), section
    assert (cfg.seed, cfg.iterations, cfg.algorithm.train_timesteps, cfg.algorithm.solver) == (0, 480, 3, "ode")
    same = ("beta", "learning_rate", "lr_schedule", "lr_final_fraction", "micro_batch_size")
    assert [getattr(cfg.learner, k) for k in same] == [getattr(base.learner, k) for k in same]


@pytest.mark.parametrize("name", FORWARD_2026_SD35)
def test_sd35_2026_forward_process_presets_carry_their_references_settings(name):
    algorithm, g, k, lr, beta, rank = FORWARD_2026_SD35[name]
    cfg = preset(name)
    assert (cfg.algorithm.name, cfg.sampling.group_size, cfg.algorithm.train_timesteps) == (algorithm, g, k)
    assert (cfg.learner.learning_rate, cfg.learner.beta, cfg.model.lora.rank) == (lr, beta, rank)
    assert cfg.model.guidance_scale == 1.0 and cfg.algorithm.solver == "dpm" and cfg.learner.optimizer_steps_per_iteration == 1


def test_shapes_presets_carry_each_algorithms_sampling():
    dance, mix, g2 = preset("shapes_dancegrpo"), preset("shapes_mixgrpo"), preset("shapes_g2rpo")
    assert (dance.sampling.sde_kind, dance.sampling.noise_level, dance.algorithm.timestep_fraction) == ("dance", 0.3, 0.6)
    assert dance.algorithm.name == "dance_grpo"
    assert dance.sampling.same_latent and dance.rewards.combination == "advantage_sum" and dance.learner.beta == 0
    assert (mix.algorithm.name, mix.algorithm.window_size, mix.algorithm.window_stride) == ("mix_grpo", 2, 1)
    assert (g2.algorithm.name, g2.algorithm.steps, g2.algorithm.granularities) == ("g2rpo", [0, 1, 2, 3], [1, 2])
    assert g2.rewards.combination == "advantage_sum" and g2.learner.beta == 0
    fast = preset("shapes_flowgrpo_fast")
    assert (fast.algorithm.name, fast.algorithm.window_size, tuple(fast.algorithm.window_range)) == ("flow_grpo_fast", 2, (0, 5))


@pytest.mark.parametrize("name", SD35)
def test_sd35_presets_carry_flow_grpo_paper_settings(name):
    scorer, beta = SD35[name]
    cfg = preset(name)
    m, s, lr, a = cfg.model, cfg.sampling, cfg.learner, cfg.algorithm
    assert (m.path, m.family, m.dtype, m.resolution, m.guidance_scale) == (
        "stabilityai/stable-diffusion-3.5-medium", "sd3", "bfloat16", 512, 4.5)
    assert (m.lora.enabled, m.lora.rank, m.lora.alpha) == (True, 32, 64)
    assert (a.name, s.noise_level, s.group_size, s.num_steps, s.eval_num_steps) == ("flow_grpo", 0.7, 24, 10, 40)
    assert (lr.beta, lr.learning_rate, lr.clip_range, a.kl_form, lr.precision) == (beta, 3e-4, 1e-4, "flow_grpo", "bf16")
    assert cfg.data.images_per_iteration == 1152 and cfg.prompts_per_iteration == 48
    assert [sc.name for sc in cfg.rewards.scorers] == [scorer]
    _assert_flow_grpo_code_settings(cfg)


def _assert_flow_grpo_code_settings(cfg):
    """What every SD3.5 run of the Flow-GRPO code shares: the scheduler's sigma grid, np.std + 1e-4, the
    zero-advantage filter of train_sd3.py, EMA(0.9) every 8 steps."""
    s, lr = cfg.sampling, cfg.learner
    assert s.sigma_schedule == "scheduler"
    assert (lr.adv_std, lr.adv_eps, lr.drop_zero_std_groups, lr.std_mode) == ("population", 1e-4, True, "global")
    assert (lr.ema_decay, lr.ema_update_every) == (0.9, 8)


def test_sd35_geneval2_preset_is_sd35_geneval_with_soft_tifa():
    """Flow-GRPO's GenEval recipe with GenEval 2's Soft-TIFA as reward and evaluation (docs/rewards.md): a
    Qwen2.5-VL-7B judge in bf16 in the quarter each hybrid worker leaves, the GenEval prompts with their questions."""
    base, cfg = preset("sd35_geneval"), preset("sd35_geneval2")
    for section in ("model", "algorithm", "sampling", "learner"):
        assert getattr(cfg, section) == getattr(base, section), section
    (scorer,) = cfg.rewards.scorers
    assert (scorer.name, scorer.model, scorer.num_gpus_per_actor, cfg.cluster.learner_num_gpus) == (
        "soft_tifa", "Qwen/Qwen2.5-VL-7B-Instruct", 0.25, 0.75)
    assert scorer.options == {"dtype": "bfloat16", "batch_size": 8, "require_questions": True}
    assert scorer.batch_size_per_request == scorer.options["batch_size"]  # what the memory plan counts at once
    for split in ("train", "test"):
        records = load_prompts(ROOT / getattr(cfg.data, f"{split}_prompts"))
        assert [{k: v for k, v in r.items() if k != "questions"} for r in records] == load_prompts(
            ROOT / getattr(base.data, f"{split}_prompts"))
        assert all(r["questions"] for r in records)


def test_sd35_fast_preset_is_flow_grpos_maintained_fast_config():
    """config/grpo.py pickscore_sd3_fast_nocfg: guidance 1 everywhere, CPS, window 3 in (0, T // 2),
    noise 0.8, clip 1e-5 on the squared-error log-prob, beta 0, 18 images per prompt."""
    cfg = preset("sd35_pickscore_fast")
    m, s, lr, a = cfg.model, cfg.sampling, cfg.learner, cfg.algorithm
    assert (m.guidance_scale, m.eval_guidance_scale) == (1.0, 1.0)
    assert (a.name, s.sde_kind, s.log_prob_form, s.noise_level) == ("flow_grpo_fast", "cps", "squared_error", 0.8)
    assert (a.window_size, tuple(a.window_range), s.group_size, s.num_steps) == (3, (0, 5), 18, 10)
    assert (lr.clip_range, lr.beta) == (1e-5, 0.0)
    _assert_flow_grpo_code_settings(cfg)


@pytest.mark.parametrize("name", FLUX)
def test_flux_presets_carry_their_papers_settings(name):
    algorithm, steps, lr = FLUX[name]
    cfg = preset(name)
    assert (cfg.model.family, cfg.model.path, cfg.model.lora.enabled) == ("flux", "black-forest-labs/FLUX.1-dev", False)
    assert (cfg.algorithm.name, cfg.sampling.num_steps, cfg.sampling.group_size) == (algorithm, steps, 12)
    assert cfg.learner.learning_rate == lr and cfg.learner.beta == 0
    assert [s.name for s in cfg.rewards.scorers] == ["pickscore", "clipscore"]
    assert cfg.rewards.combination == "advantage_sum"


def test_flux_algorithm_specifics():
    dance, mix, g2 = preset("flux_dancegrpo_hps"), preset("flux_mixgrpo_hps"), preset("flux_g2rpo_hps")
    assert (dance.sampling.sde_kind, dance.sampling.noise_level, dance.algorithm.timestep_fraction) == ("dance", 0.3, 0.6)
    assert (mix.algorithm.window_size, mix.algorithm.window_every) == (4, 25)
    assert (g2.algorithm.steps, g2.algorithm.granularities) == (list(range(8)), [1, 2])
    # One forward per shared x_k: a micro-batch holds the G branches (their get_pred(...).repeat(G)).
    assert (g2.learner.micro_batch_size, g2.learner.optimizer_step_per) == (12, "minibatch")
    for cfg in (dance, mix, g2):  # torch's unbiased std + 1e-8 in their train_*.py; the hand-built linear grid
        assert (cfg.learner.adv_std, cfg.learner.adv_eps, cfg.sampling.sigma_schedule) == ("unbiased", 1e-8, "linear")


GPU_PRESETS = sorted(p.stem for p in PRESETS if p.stem.startswith(("sd35_", "flux_")) or p.stem in NEW_FAMILIES
                     or p.stem in FLUX2_SD35L)


@pytest.mark.parametrize("name", sorted(FLUX2_SD35L))
def test_flux2_and_sd35_large_presets_carry_their_references_values(name):
    family, path, algorithm, steps, guidance, group, rank, scorers = FLUX2_SD35L[name]
    cfg = preset(name)
    assert (cfg.model.family, cfg.model.path, cfg.algorithm.name) == (family, path, algorithm)
    assert (cfg.sampling.num_steps, cfg.model.guidance_scale, cfg.sampling.group_size, cfg.model.lora.rank) == (
        steps, guidance, group, rank)
    assert [s.name for s in cfg.rewards.scorers] == scorers
    if family == "sd3":  # Flow-GRPO's SD3.5 GenEval preset on the larger transformer, checkpointing to fit
        base = preset("sd35_geneval")
        assert cfg.model.gradient_checkpointing and not base.model.gradient_checkpointing
        for section in ("sampling", "learner", "data", "rewards", "algorithm"):
            assert getattr(cfg, section) == getattr(base, section), section
    else:  # Flow-Factory's FLUX.2 examples sample on the pipeline's own grid (compute_empirical_mu)
        assert cfg.sampling.shift_mode == "resolution" and cfg.prompts_per_iteration == 48


@pytest.mark.parametrize("name", sorted(NEW_FAMILIES))
def test_new_family_presets_carry_their_references_values(name):
    family, algorithm, scorer, steps, guidance, (prompts, group), rank = NEW_FAMILIES[name]
    cfg = preset(name)
    assert (cfg.model.family, cfg.algorithm.name, cfg.sampling.num_steps, cfg.model.guidance_scale) == (
        family, algorithm, steps, guidance)
    assert [s.name for s in cfg.rewards.scorers] == [scorer]
    assert (cfg.prompts_per_iteration, cfg.sampling.group_size, cfg.model.lora.rank) == (prompts, group, rank)


NODE = {"CPU": 192.0, "GPU": 8.0}  # one 8-GPU node (192 vCPUs, as AWS p5.48xlarge)


@pytest.mark.parametrize("name", GPU_PRESETS)
def test_gpu_presets_are_hybrid_on_one_8_gpu_node(name):
    """Every SD3.5 and FLUX preset: cluster.layout hybrid, one worker per GPU (a share over a half, so Ray never
    puts two on one GPU), and the reward actors fill exactly the rest of the 8 GPUs, none taking more than
    the sliver a worker leaves (so Ray must place one per sliver)."""
    from cluster.preflight import resource_demand

    c = preset(name).cluster
    assert (c.layout, c.num_learner_ranks, c.num_rollout_actors, c.rollout_num_gpus) == ("hybrid", 8, 8, 0)
    assert 0.5 < c.learner_num_gpus <= 1
    rewards = [s for s in preset(name).rewards.scorers if s.num_gpus_per_actor > 0]
    assert all(s.num_gpus_per_actor <= 1 - c.learner_num_gpus + 1e-9 for s in rewards)
    assert sum(s.actors * s.num_gpus_per_actor for s in rewards) == pytest.approx(8 * (1 - c.learner_num_gpus))
    demand = resource_demand(preset(name))
    assert sum(part["GPU"] for part in demand.values()) == pytest.approx(8)
    assert sum(part["CPU"] for part in demand.values()) <= NODE["CPU"]


@pytest.mark.parametrize("name", [p.stem for p in PRESETS])
def test_every_preset_passes_its_dry_run(name, capsys):
    """`launch.py --dry-run`: the GPU presets on one 8-GPU node (memory plan within 80 GB GPUs, the cost model's
    table printed), the shapes presets on a 2-core laptop."""
    import json

    import launch

    resources = NODE if name in GPU_PRESETS else {"CPU": 2.0, "GPU": 0.0}
    rc = launch.main(["--config", str(ROOT / "configs" / f"{name}.yaml"), "--dry-run",
                      "--assume-resources", json.dumps(resources)])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    if name in GPU_PRESETS:
        assert "memory hybrid worker:" in out and "cost hybrid: 8 workers" in out


# ----------------------------------------------------------------------------- shipped prompt sets


def test_shipped_prompt_sets_are_what_the_script_writes_and_are_disjoint():
    for name, (train, test) in make_text_prompts.build(seed=0).items():
        assert load_prompts(ASSETS / f"{name}_train.jsonl") == [{**r, "exclude": r.get("exclude", [])} if "include" in r else r for r in train]
        assert load_prompts(ASSETS / f"{name}_test.jsonl") == [{**r, "exclude": r.get("exclude", [])} if "include" in r else r for r in test]
        assert not {r["prompt"] for r in train} & {r["prompt"] for r in test}, name


def test_ocr_sets_have_one_quoted_target_and_disjoint_targets():
    train, test = (load_prompts(ASSETS / f"ocr_{split}.jsonl") for split in ("train", "test"))
    assert (len(train), len(test)) == (200, 50)
    for record in train + test:
        assert record["prompt"].count('"') == 2
    assert not {ocr_target(r["prompt"]) for r in train} & {ocr_target(r["prompt"]) for r in test}


def test_geneval_set_uses_detector_vocabulary():
    records = load_prompts(ASSETS / "geneval_train.jsonl", classes=make_text_prompts.COCO_PLURALS,
                           colors=make_text_prompts.GENEVAL_COLORS)
    assert {r["tag"] for r in records} == {"single_object", "two_object", "counting", "colors", "position", "color_attr"}


# ----------------------------------------------------------------------------- prompt file formats


def write(tmp_path, name, *lines):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_txt_file_is_one_prompt_per_line(tmp_path):
    path = write(tmp_path, "p.txt", "  a cat on a mat ", "", 'a sign that reads "HI"')
    assert load_prompts(path) == [{"prompt": "a cat on a mat"}, {"prompt": 'a sign that reads "HI"'}]


def test_plain_jsonl_records_keep_prompt_and_tag(tmp_path):
    path = write(tmp_path, "p.jsonl", json.dumps({"prompt": "a dog"}), json.dumps({"prompt": "a cat", "tag": "animals"}))
    assert load_prompts(path) == [{"prompt": "a dog"}, {"prompt": "a cat", "tag": "animals"}]


@pytest.mark.parametrize("record, field", [
    ({"prompt": "a dog", "seed": 1}, "record.seed: unknown key"),
    ({"tag": "x"}, "record.prompt: missing"),
    ({"prompt": ""}, "prompt: expected a non-empty string"),
    ({"prompt": "a dog", "tag": 3}, "tag: expected a non-empty string"),
    ({"tag": "colors", "exclude": [], "prompt": "a dog"}, "record.include: missing"),  # GenEval-shaped
])
def test_bad_plain_record_names_file_line_and_field(tmp_path, record, field):
    path = write(tmp_path, "p.jsonl", json.dumps({"prompt": "ok"}) if "exclude" not in record else
                 json.dumps({"tag": "colors", "include": [{"class": "dog", "count": 1}], "prompt": "a dog"}), json.dumps(record))
    with pytest.raises(ValueError) as error:
        load_prompts(path)
    assert str(error.value).startswith(f"{path}:2: ") and field in str(error.value)


def test_mixed_kinds_in_one_file_are_an_error(tmp_path):
    geneval = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"}
    path = write(tmp_path, "p.jsonl", json.dumps({"prompt": "a dog"}), json.dumps(geneval))
    with pytest.raises(ValueError, match=r"p.jsonl:2: record: a GenEval metadata record in a file of plain records \(line 1\)"):
        load_prompts(path)


def test_unknown_suffix_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ValueError, match=r"unknown prompt file type '.csv'"):
        load_prompts(write(tmp_path, "p.csv", "a dog"))
    with pytest.raises(FileNotFoundError, match="prompt file does not exist"):
        load_prompts(tmp_path / "missing.jsonl")


@pytest.mark.parametrize("name", SHAPES)
def test_shapes_presets_fit_the_head_a_2_core_laptop_starts(name):
    """`ray start --head` on a 2-core laptop declares 2 CPUs; `ray job submit` of a shapes preset must fit
    them (a local `launch.py` sizes its own Ray, but a submitted job gets the head as it is)."""
    from cluster.preflight import PreflightReport, check_resources

    report = PreflightReport(resources_source="ray start --head on 2 cores")
    check_resources(load_config(ROOT / "configs" / f"{name}.yaml"), report, {"CPU": 2.0}, local=False)
    assert report.ok, [c.message for c in report.errors]


@pytest.mark.parametrize("name", PER_STEP_2026_SD35)
def test_the_2026_per_step_sd35_presets_carry_their_references_settings(name):
    algorithm, guidance, g, trained, bound, beta = PER_STEP_2026_SD35[name]
    cfg = preset(name)
    assert cfg.algorithm.name == algorithm and cfg.model.guidance_scale == guidance and cfg.sampling.group_size == g
    assert int(cfg.sampling.num_steps * cfg.algorithm.timestep_fraction) == trained and cfg.learner.beta == beta
    assert getattr(cfg.algorithm, "kl_mask_threshold", cfg.learner.clip_range) == bound
    assert cfg.cluster.layout == "hybrid" and cfg.rewards.scorers[0].name == "pickscore"
