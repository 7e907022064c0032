"""rewards/: scorer contract, OCR rule, combination, config, worker in-process, shapes_geneval."""

import numpy as np
import pytest

from rewards.base import ScoreResult, ScorerInputError, build_scorer, known_scorers, validate_batch
from rewards.combine import combine, score_matrix, weighted_sum
from rewards.config import RewardsConfig, ScorerConfig
from rewards.ocr import ocr_reward, ocr_target
from rewards.shapes import Scene, ShapeObject, all_records, render, sample_scene
from rewards.worker import RewardWorker

pytestmark = pytest.mark.unit


def _images(b=2, h=8, w=8):
    return np.zeros((b, h, w, 3), dtype=np.uint8)


# -- input validation -----------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("images", "prompts", "message"),
    [
        (np.zeros((2, 8, 8, 3), dtype=np.float32), ["a", "b"], "uint8"),
        (np.zeros((8, 8, 3), dtype=np.uint8), ["a"], r"\[B, H, W, 3\]"),
        (np.zeros((2, 3, 8, 8), dtype=np.uint8), ["a", "b"], "3 channels"),
        (np.zeros((2, 8, 8, 4), dtype=np.uint8), ["a", "b"], "3 channels"),
        (np.zeros((0, 8, 8, 3), dtype=np.uint8), [], "empty batch"),
        (np.zeros((2, 8, 8, 3), dtype=np.uint8), ["a"], "2 images but 1 prompts"),
        (np.zeros((1, 8, 8, 3), dtype=np.uint8), "a", "list of strings"),
        ([[0]], ["a"], "numpy uint8"),
    ],
)
def test_validate_batch_errors(images, prompts, message):
    with pytest.raises(ScorerInputError, match=message):
        validate_batch(images, prompts, None)


def test_validate_batch_metadata():
    assert validate_batch(_images(), ["a", "b"], None) == [{}, {}]
    with pytest.raises(ScorerInputError, match="2 images but 1 metadata"):
        validate_batch(_images(), ["a", "b"], [{}])


def test_unknown_scorer_lists_known():
    with pytest.raises(KeyError, match="known scorers: .*ocr.*shapes_geneval"):
        build_scorer("nope")
    assert {"ocr", "geneval", "pickscore", "clipscore", "shapes_geneval"} <= set(known_scorers())


def test_unknown_option_names_scorer_and_key():
    with pytest.raises(TypeError, match="'shapes_geneval' has no option.*'colour'"):
        build_scorer("shapes_geneval", colour=1)


def test_score_result_checks_and_concat():
    with pytest.raises(ValueError, match="diagnostic 'x'"):
        ScoreResult(np.zeros(3), {"x": np.zeros(2)})
    joined = ScoreResult.concat([ScoreResult([1.0], {"x": [2.0]}), ScoreResult([3.0, 4.0], {"x": [5.0, 6.0]})])
    np.testing.assert_array_equal(joined.reward, [1, 3, 4])
    np.testing.assert_array_equal(joined.diagnostics["x"], [2, 5, 6])


# -- OCR rule (Flow-GRPO's flow_grpo/ocr.py) --------------------------------------------------------------

def test_ocr_target_is_first_quoted_span():
    assert ocr_target('a sign saying "Open Now" and "closed"') == "Open Now"
    with pytest.raises(ScorerInputError, match="no double-quoted target.*a plain prompt"):
        ocr_target("a plain prompt")


@pytest.mark.parametrize(
    ("read", "target", "expected"),
    [
        ("Hello World", "hello world", 1.0),        # case and spaces ignored
        ("xx HELLOWORLD yy", "Hello World", 1.0),   # substring counts as exact
        ("Helo World", "Hello World", 0.9),         # 1 edit over 10 chars
        ("", "abcd", 0.0),                          # nothing read
        ("a" * 50, "abcd", 0.0),                    # many wrong characters: capped at len(target), not below 0
        ("abxd", "abcd", 0.75),
    ],
)
def test_ocr_reward_rule(read, target, expected):
    assert ocr_reward(read, target) == pytest.approx(expected)


# -- combination -----------------------------------------------------------------------------------------

def test_weighted_sum_and_matrix():
    scores = {"a": np.array([1.0, 0.0, np.nan]), "b": np.array([0.5, 1.0, 1.0])}
    weights = {"b": 2.0, "a": 1.0}
    np.testing.assert_allclose(weighted_sum(scores, weights), [2.0, 2.0, np.nan])
    combined = combine(scores, weights)
    assert combined.names == ("b", "a")
    np.testing.assert_array_equal(combined.matrix, score_matrix(scores, ["b", "a"]))
    np.testing.assert_array_equal(combined.valid, [True, True, False])
    with pytest.raises(ValueError, match="do not match"):
        weighted_sum(scores, {"a": 1.0})


# -- config ----------------------------------------------------------------------------------------------

def test_config_defaults_and_descriptions():
    cfg = RewardsConfig()
    assert [s.name for s in cfg.scorers] == ["shapes_geneval"]
    for model in (RewardsConfig, ScorerConfig):
        assert all(f.description for f in model.model_fields.values())


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"scorers": [{"name": "ocr"}, {"name": "ocr"}]}, r"scorers\[1\].name"),
        ({"scorers": [{"name": "ocr", "weight": 0}]}, r"scorers\[\*\].weight"),
        ({"scorers": [{"name": "ocrr"}]}, "known scorers"),
        ({"scorers": [{"name": "ocr", "model": "x"}]}, "model: scorer 'ocr' loads no weights"),
        ({"scorers": [{"name": "shapes_geneval", "options": {"bad": 1}}]}, "options: .*'bad'"),
        ({"scorers": [{"name": "ocr", "batch_size": 4}]}, "batch_size"),
        ({"combination": "sum"}, "combination"),
        ({"nan_policy": "drop"}, "nan_policy"),
    ],
)
def test_config_errors_name_the_key(data, key):
    with pytest.raises(ValueError, match=key):
        RewardsConfig.model_validate(data)


def test_scorer_options_thread_count_and_model():
    cfg = ScorerConfig(name="pickscore", model="/weights/pick", num_cpus_per_actor=2)
    assert cfg.scorer_options() == {"model": "/weights/pick", "num_threads": 2, "device": "cpu"}
    assert ScorerConfig(name="geneval", model="/m2f", num_gpus_per_actor=1).scorer_options() == {
        "detector": "/m2f", "num_threads": 1}
    # max(1, floor(num_cpus_per_actor)): a fraction of a CPU is one thread, 2.5 CPUs are two.
    assert [ScorerConfig(name="ocr", num_cpus_per_actor=c).scorer_options()["num_threads"] for c in (0.5, 2.5)] == [1, 2]


def test_fractional_gpus_share_a_gpu_and_above_one_must_be_whole():
    assert ScorerConfig(name="pickscore", num_gpus_per_actor=0.25).num_gpus_per_actor == 0.25
    assert ScorerConfig(name="pickscore", num_gpus_per_actor=2).num_gpus_per_actor == 2
    with pytest.raises(ValueError, match="num_gpus_per_actor"):
        ScorerConfig(name="pickscore", num_gpus_per_actor=1.5)


# -- shapes_geneval --------------------------------------------------------------------------------------

def test_shapes_geneval_scores_clean_and_wrong_renders():
    rng = np.random.default_rng(0)
    records = [r for tag_records in all_records().values() for r in tag_records[:2]]
    images = np.stack([render(sample_scene(r, rng)) for r in records])
    prompts = [r["prompt"] for r in records]
    scorer = build_scorer("shapes_geneval")
    result = scorer(images, prompts, records)
    np.testing.assert_array_equal(result.reward, 1.0)
    assert set(result.diagnostics) == {"strict", "partial", "correct", "readable"}
    np.testing.assert_array_equal(result.diagnostics["readable"], 1.0)
    blank = scorer(np.zeros_like(images[:1]), prompts[:1], records[:1])
    assert blank.reward[0] == 0.0 and blank.diagnostics["strict"][0] == 0.0
    noise = scorer(rng.integers(0, 256, images[:1].shape, dtype=np.uint8), prompts[:1], records[:1])
    assert noise.diagnostics["readable"][0] == 0.0 and noise.diagnostics["correct"][0] == 0.0


def test_shapes_geneval_partial_vs_strict():
    record = next(r for r in all_records()["counting"] if r["include"][0]["count"] == 2)
    shape = record["include"][0]["class"]
    one = render(Scene((ShapeObject(shape, "red", 2, 2, 10),)))[None]
    partial = build_scorer("shapes_geneval")(one, [record["prompt"]], [record])
    strict = build_scorer("shapes_geneval", reward="strict")(one, [record["prompt"]], [record])
    assert partial.reward[0] == pytest.approx(0.5)  # one of two: count term 1 - 1/2
    assert strict.reward[0] == 0.0
    np.testing.assert_array_equal(partial.diagnostics["strict"], strict.diagnostics["strict"])


def test_shapes_geneval_needs_metadata():
    with pytest.raises(ScorerInputError, match="lacks GenEval 'tag'/'include'"):
        build_scorer("shapes_geneval")(_images(1, 32, 32), ["a photo of a circle"], None)


# -- worker in-process -----------------------------------------------------------------------------------

def test_worker_survives_bad_input_and_caches_by_request_id():
    record = all_records()["single_object"][0]
    image = render(sample_scene(record, np.random.default_rng(1)))[None]
    worker = RewardWorker("shapes_geneval")
    bad = worker.score("r0", image.astype(np.float32), [record["prompt"]], [record])
    assert bad.result is None and bad.error.startswith("ScorerInputError: images must be uint8")
    good = worker.score("r1", image, [record["prompt"]], [record])
    assert good.error is None and good.result.reward[0] == 1.0 and good.scorer == "shapes_geneval"
    assert worker.score("r1", image, [record["prompt"]], [record]) is good
    assert worker.requests_served == 2
