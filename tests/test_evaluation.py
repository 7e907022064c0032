"""The powered, paired evaluation: plans balanced by tag, bootstrap intervals, per-image files, paired
comparisons (a known difference is detected, a zero difference is not), and the errors for evaluations
that cannot be paired."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from cluster.config import ConfigError, load_config
from cluster.eval_stats import bootstrap, worst_case_halfwidths
from cluster.evaluation import (
    PICTURED,
    EvaluationFileError,
    check_power,
    compare_evaluations,
    evaluate,
    load_evaluation,
    plan_evaluation,
    plan_for,
    sample_sharded,
)
from common.data_plane import EvalShare
from rewards.base import build_scorer
from rewards.prompts import load_prompts
from rewards.shapes import all_records, mislabeled_caption, render, sample_scene
from tests.tiny_models import FLOWGRPO

TEST_PROMPTS = load_prompts("assets/prompts/shapes_test.jsonl")
ALL_RECORDS = {r["prompt"]: r for rs in all_records().values() for r in rs}


# ----------------------------------------------------------------------------- plans


@pytest.mark.unit
def test_plan_balances_images_over_tags_and_fixes_a_seed_per_image():
    plan = plan_evaluation(TEST_PROMPTS, split="test", seed=1, images_per_tag=200, images_per_prompt=4)
    per_tag = plan.images_per_tag()
    prompts_per_tag = Counter(r["tag"] for r in TEST_PROMPTS)
    assert set(per_tag) == set(prompts_per_tag)
    for tag, n in per_tag.items():  # ceil(200 / prompts of the tag) images for each of its prompts
        assert 200 <= n < 200 + prompts_per_tag[tag]
    assert per_tag["single_object"] == 200 and per_tag["color_attr"] == 24 * 9
    seeds = [s for per_prompt in plan.seeds for s in per_prompt]
    assert len(set(seeds)) == len(seeds) == plan.num_images
    again = plan_evaluation(TEST_PROMPTS, split="test", seed=1, images_per_tag=200, images_per_prompt=4)
    assert again.fingerprint() == plan.fingerprint()
    other = plan_evaluation(TEST_PROMPTS, split="test", seed=2, images_per_tag=200, images_per_prompt=4)
    assert other.fingerprint() != plan.fingerprint()
    # image j of prompt i keeps its seed whatever the number of images per prompt
    small = plan_evaluation(TEST_PROMPTS, split="test", seed=1, images_per_tag=None, images_per_prompt=2)
    assert all(s[:2] == b for s, b in zip(plan.seeds, small.seeds, strict=True))
    train = plan_evaluation(TEST_PROMPTS, split="train", seed=1, images_per_tag=200, images_per_prompt=4)
    assert not set(seeds) & {s for p in train.seeds for s in p}  # the held-out check draws other noise


@pytest.mark.unit
def test_a_plan_too_small_for_its_targets_is_refused_naming_the_key():
    small = plan_evaluation(TEST_PROMPTS, split="test", seed=1, images_per_tag=50, images_per_prompt=1)
    with pytest.raises(ConfigError, match=r"data.eval_images_per_tag \(to about 196\)"):
        check_power(small, 0.07, 0.03)
    enough = plan_evaluation(TEST_PROMPTS, split="test", seed=1, images_per_tag=200, images_per_prompt=1)
    worst = check_power(enough, 0.07, 0.03)
    assert worst["single_object"] <= 0.07 and worst["overall"] <= 0.03
    cfg = load_config(FLOWGRPO, ["data.eval_images_per_tag=100", "data.eval_max_halfwidth=0.07"])
    with pytest.raises(ConfigError, match="data.eval_images_per_tag"):
        plan_for(cfg, "test")


@pytest.mark.unit
def test_worst_case_halfwidth_is_the_binomial_bound():
    w = worst_case_halfwidths({"a": 196, "b": 196})
    assert w["a"] == pytest.approx(1.96 * 0.5 / 14, rel=1e-3)
    assert w["overall"] == pytest.approx(w["a"] / np.sqrt(2), rel=1e-6)


# ----------------------------------------------------------------------------- the bootstrap


@pytest.mark.unit
def test_fixed_prompt_interval_covers_95_percent_and_the_two_stage_one_is_conservative():
    """Binomial verdicts with p = 0.6 in 2 tags of 10 prompts x 20 images, 200 repetitions: the
    fixed-prompt interval of `overall` covers 0.6 about 95% of the time; the two-stage interval
    (prompts, then images) counts the seed noise twice when prompts do not differ, and covers ~always."""
    rng = np.random.default_rng(0)
    prompt_index = np.repeat(np.arange(20), 20)
    tags = np.where(prompt_index < 10, "a", "b")
    covered, covered_two_stage, ratios = 0, 0, []
    for trial in range(200):
        values = (rng.random(400) < 0.6).astype(float)
        est = bootstrap(values, prompt_index, tags, n_boot=400, seed=trial)["overall"]
        wide = bootstrap(values, prompt_index, tags, n_boot=400, seed=trial, resample_prompts=True)["overall"]
        covered += est.low <= 0.6 <= est.high
        covered_two_stage += wide.low <= 0.6 <= wide.high
        ratios.append(wide.halfwidth / est.halfwidth)
    assert 0.9 <= covered / 200 <= 0.99 and covered_two_stage / 200 >= 0.98
    assert 1.3 < np.mean(ratios) < 1.55  # about sqrt(2): the seed noise counted twice


@pytest.mark.unit
def test_bootstrap_widens_with_prompt_to_prompt_spread():
    """Resampling prompts first: prompts that differ (half always right, half always wrong) give a far
    wider interval than the same mean from identical prompts."""
    prompt_index = np.repeat(np.arange(8), 25)
    tags = np.full(200, "t")
    spread = np.where(prompt_index < 4, 1.0, 0.0)
    same = np.tile(np.r_[np.ones(12), np.zeros(13)], 8)
    wide = bootstrap(spread, prompt_index, tags, resample_prompts=True)["t"]
    narrow = bootstrap(same, prompt_index, tags, resample_prompts=True)["t"]
    assert wide.halfwidth > 2.5 * narrow.halfwidth
    # with the prompts fixed, the interval is the tag's binomial one, one image per prompt included
    fixed = bootstrap(spread, prompt_index, tags)["t"]
    assert fixed.halfwidth == pytest.approx(1.96 * 0.5 / np.sqrt(200), abs=0.01)
    one_each = bootstrap(spread[::25], prompt_index[::25], tags[::25])["t"]
    assert one_each.halfwidth > 0.2


# ----------------------------------------------------------------------------- evaluations on rendered images


def _renders(correct_share: float, seed_offset: int, shared: bool = True, workers: int = 1):
    """A sampler that draws, for each (prompt, seed), a clean render of the prompt's scene with
    probability `correct_share`, else a render of a mislabelled scene: real images for the real
    shapes scorer, with a known accuracy. `shared`: whether an image is right is decided by its seed
    alone (the same draw in every run with the same share), else by the seed and `seed_offset`.
    `workers`: 1 keeps every image at hand (as in process); more shard the prompts and keep only the
    pictures' images, as the trainer's rollout actors do."""
    def draw(prompts, seeds):
        by_prompt = {r["prompt"]: r for r in TEST_PROMPTS}
        images = []
        for prompt, per_prompt in zip(prompts, seeds, strict=True):
            record = by_prompt[prompt]
            for s in per_prompt:
                rng = np.random.default_rng([s, seed_offset])
                right = np.random.default_rng(s if shared else [s, seed_offset, 1]).random() < correct_share
                scene = sample_scene(record, rng)
                if not right:
                    if record["tag"] in ("position", "counting", "color_attr", "colors"):
                        scene = sample_scene(ALL_RECORDS[mislabeled_caption(record, scene, rng)], rng)
                    else:
                        scene = type(scene)(())  # an empty image: nothing drawn
                images.append(render(scene))
        return np.stack(images)

    def share(_, prompts, seeds, keep):
        images = draw(prompts, seeds)
        return EvalShare.of(images, range(len(images)) if workers == 1 else keep)

    def sample(prompts, seeds, keep):
        return sample_sharded([None] * workers, prompts, seeds, keep, share)
    return sample


def _score():
    scorer = build_scorer("shapes_geneval")
    return lambda parts: [{"shapes_geneval": scorer(*part)} for part in parts]


def _records():
    return [r for r in TEST_PROMPTS if r["tag"] != "color_attr"] + [r for r in TEST_PROMPTS if r["tag"] == "color_attr"][:6]


@pytest.mark.component
def test_known_difference_is_detected_and_zero_difference_is_not(tmp_path):
    plan = plan_evaluation(_records(), split="test", seed=3, images_per_tag=60, images_per_prompt=1)
    score = _score()
    a = evaluate(plan, _renders(0.5, 0), score, output_dir=tmp_path / "a")
    again = evaluate(plan, _renders(0.5, 0, workers=3), score, output_dir=tmp_path / "again")
    # The same evaluation twice agrees exactly, intervals included, also sharded over workers that keep
    # only the pictures' images: the grid is the same, and other images are not at hand.
    assert (tmp_path / "a" / "eval_images.jsonl").read_text() == (tmp_path / "again" / "eval_images.jsonl").read_text()
    assert a.summary == again.summary
    assert (tmp_path / "a" / "eval_grid.png").read_bytes() == (tmp_path / "again" / "eval_grid.png").read_bytes()
    assert len(a.kept) == plan.num_images and sorted(again.kept) == plan.image_index(**PICTURED) != sorted(a.kept)
    with pytest.raises(KeyError, match="PICTURED"):
        again.take([plan.num_images - 1])
    assert 0.35 <= a.summary["overall"] <= 0.65 and a.summary["ci"]["overall"][0] < a.summary["overall"]
    evaluate(plan, _renders(0.5, 1, shared=False), score, output_dir=tmp_path / "other_draws")  # same rate, other luck
    evaluate(plan, _renders(0.8, 0), score, output_dir=tmp_path / "better")

    zero = compare_evaluations(tmp_path / "a", tmp_path / "other_draws")
    lo, hi = zero["differences"]["accuracy"]["overall"]["ci"]
    assert lo < 0 < hi and "not distinguishable" in next(v for v in zero["verdicts"] if "overall" in v)
    gain = compare_evaluations(tmp_path / "a", tmp_path / "better")
    d = gain["differences"]["accuracy"]["overall"]
    assert d["ci"][0] > 0.15 and d["difference"] == pytest.approx(d["after"] - d["before"])
    assert "a real gain" in next(v for v in gain["verdicts"] if "overall" in v)
    rows = [json.loads(x) for x in (tmp_path / "a" / "eval_images.jsonl").read_text().splitlines()]
    assert {"prompt_index", "image_index", "tag", "prompt", "seed", "shapes_geneval", "shapes_geneval/correct"} <= set(rows[0])
    assert len(rows) == plan.num_images


@pytest.mark.component
def test_unpairable_or_damaged_evaluations_are_refused_naming_the_file(tmp_path):
    records = _records()[:6]
    score = _score()
    evaluate(plan_evaluation(records, split="test", seed=3, images_per_tag=None, images_per_prompt=2),
             _renders(0.5, 0), score, output_dir=tmp_path / "a")
    evaluate(plan_evaluation(records, split="test", seed=4, images_per_tag=None, images_per_prompt=2),
             _renders(0.5, 0), score, output_dir=tmp_path / "seeds")
    evaluate(plan_evaluation(records, split="test", seed=3, images_per_tag=None, images_per_prompt=3),
             _renders(0.5, 0), score, output_dir=tmp_path / "count")
    with pytest.raises(EvaluationFileError, match="different prompts, seeds or image counts.*data.eval_seed"):
        compare_evaluations(tmp_path / "a", tmp_path / "seeds")
    with pytest.raises(EvaluationFileError, match="different prompts, seeds or image counts"):
        compare_evaluations(tmp_path / "a", tmp_path / "count")
    images = tmp_path / "a" / "eval_images.jsonl"
    text = images.read_text()
    images.write_text("".join(text.splitlines(keepends=True)[:-1]))
    with pytest.raises(EvaluationFileError, match=r"eval_images.jsonl: 11 rows, but .*eval.json counts 12 images"):
        load_evaluation(tmp_path / "a")
    images.write_text((tmp_path / "count" / "eval_images.jsonl").read_text().splitlines(keepends=True)[0] * 12)
    with pytest.raises(EvaluationFileError, match="does not match .*eval.json"):
        load_evaluation(tmp_path / "a")
    with pytest.raises(EvaluationFileError, match="no evaluation summary"):
        load_evaluation(tmp_path / "missing")


@pytest.mark.component
def test_batched_evaluation_keeps_each_images_noise(tiny_sd3_path, monkeypatch):
    """RolloutWorker.evaluate samples consecutive prompts in one forward (up to the latents of the rollout's
    largest call, here group_size 4), each image from its own seed's noise: the same initial noise per seed
    as one prompt per call, and the same images up to the float rounding of another batch size."""
    import torch

    from models.config import LoraSettings, ModelConfig, SamplingConfig
    from rollout.worker import RolloutWorker

    model = ModelConfig(path=tiny_sd3_path, resolution=32, guidance_scale=2.0, lora=LoraSettings(rank=4))
    sampling = SamplingConfig(group_size=4, num_steps=4, eval_num_steps=3)
    worker = RolloutWorker(model, sampling, torch_threads=2)
    prompts = ["a photo of a red circle", "a photo of two blue squares", "a green triangle", "a yellow star"]
    seeds = [[11, 12], [13], [14, 15, 16], [17]]  # batches of at most 4 latents: prompts (0, 1) and (2, 3)
    first_steps = []  # the latents of every velocity call at the grid's first sigma: the initial noise
    velocity = worker.policy.velocity

    def recording(x, sigma, cond, *args, **kwargs):
        if sigma[0].item() == worker.eval_sigmas[0].item():
            first_steps.append(x.clone())
        return velocity(x, sigma, cond, *args, **kwargs)

    monkeypatch.setattr(worker.policy, "velocity", recording)
    single = np.concatenate([worker.evaluate([p], [s]) for p, s in zip(prompts, seeds, strict=True)])
    single_noise, single_calls = torch.cat(first_steps), len(first_steps)
    first_steps.clear()
    batched = worker.evaluate(prompts, seeds)
    assert single_calls == 4 and len(first_steps) == 2
    per_seed = torch.cat([worker._init_noise(1, torch.Generator().manual_seed(s)) for s in sum(seeds, [])])
    assert torch.equal(torch.cat(first_steps), single_noise) and torch.equal(single_noise, per_seed)
    assert batched.shape == single.shape == (7, 32, 32, 3)
    assert np.abs(batched.astype(np.int16) - single).max() <= 1


@pytest.mark.unit
def test_an_image_the_scorer_could_not_judge_is_left_out_of_the_accuracy_not_counted_wrong():
    """A verdict of None/NaN (an unscored image, rewards/unscored.py) is not a 0: the accuracy is over the judged
    images, and the summary says how many were left out; a paired comparison uses images judged in both."""
    from cluster.evaluation import summarize

    plan = plan_evaluation(_records()[:4], split="test", seed=0, images_per_tag=8, images_per_prompt=2)
    rows = [{"prompt_index": i, "image_index": j, "tag": r["tag"], "shapes_geneval": 1.0, "shapes_geneval/correct": 1.0}
            for i, (r, seeds) in enumerate(zip(plan.records, plan.seeds, strict=True)) for j in range(len(seeds))]
    for r in rows[:3]:
        r["shapes_geneval/correct"] = None  # unscored
    summary = summarize(plan, rows, ["shapes_geneval"])
    assert summary["overall"] == 1.0 and summary["accuracy_unscored"] == 3
