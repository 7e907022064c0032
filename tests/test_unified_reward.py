"""UnifiedReward judges (rewards/unified_reward.py) on the tiny random Qwen2.5-VL of tests/test_vlm_judge.py, saved
locally and loaded through the scorers' own code: the pointwise score read after its forced answer prefix, the
pairwise judge's two-image prompt, its two-way answer, the win rates through rewards/pairwise.py's both-order
averaging, and refused options. The answer-token split and the multi-image placeholder expansion against closed
forms."""

import numpy as np
import pytest

from rewards.base import build_scorer, call_scorer, scorer_factory, scorer_inputs
from rewards.pairwise import group_pairs, symmetrise, win_rates
from rewards.unified_reward import PAIR_CHOICES, POINT_ANSWER_PREFIX
from rewards.vlm_judge import expand_image_tokens, left_pad, score_expectation, split_answers
from tests.test_vlm_judge import images, save_tiny_qwen_vl

pytestmark = pytest.mark.unit

CPU = {"device": "cpu", "dtype": "float32"}


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory):
    return save_tiny_qwen_vl(tmp_path_factory.mktemp("vl"))


def image(h, w, seed):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def runs(ids, token):
    """Lengths of the runs of `token` in a 1-D id sequence, in order."""
    out, n = [], 0
    for t in [*ids, None]:
        if t == token:
            n += 1
        elif n:
            out, n = out + [n], 0
    return out


# ----------------------------------------------------------------------------- the pure parts


def test_answers_split_where_their_tokens_part():
    assert split_answers([[5, 6, 7], [5, 8, 7]]) == ([5], [6, 8])
    assert split_answers([[1], [2], [3]]) == ([], [1, 2, 3])  # the digits with no prefix: vlm_judge's score mode
    for bad in ([[5, 6], [5, 6]], [[5, 6], [5, 6, 7]], [[5, 6, 1], [5, 7, 2], [5, 6, 3]]):
        with pytest.raises(ValueError, match="do not part at one position"):
            split_answers(bad)


def test_the_split_under_qwens_pre_tokenizer():
    """Qwen2's tokenizer splits digits one by one and keeps the space before a digit its own token (its published
    pre-tokenizer pattern), so the forced prefix ends in that space and the digits are read bare, as the model
    writes "Alignment Score (1-5): 2.69"; the test tokenizer (GPT-2's pattern) may join " 1" instead."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    pattern = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    bpe.train_from_iterator(["Alignment Score (1-5): 4", "Image 1 is better."] * 20, trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    for answers, read in (([POINT_ANSWER_PREFIX + str(k) for k in range(1, 6)], list("12345")), (PAIR_CHOICES, ["1", "2"])):
        prefix, first = split_answers([bpe.encode(a).ids for a in answers])
        assert bpe.id_to_token(prefix[-1]) == "\u0120" and [bpe.id_to_token(i) for i in first] == read  # the space


def test_each_image_placeholder_expands_to_its_own_run():
    assert expand_image_tokens("<s><i>A<i>B", "<i>", [2, 3]) == "<s><i><i>A<i><i><i>B"
    assert expand_image_tokens("<i>Q", "<i>", 2) == "<i><i>Q"
    with pytest.raises(ValueError, match="1 image placeholders .* exactly 2"):
        expand_image_tokens("<i>Q", "<i>", [2, 3])


def test_left_pad_puts_every_answer_position_last():
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]


# ----------------------------------------------------------------------------- pointwise


def test_pointwise_reads_the_expected_digit_after_the_forced_prefix(tiny_vl):
    import torch

    scorer = build_scorer("unified_reward", model=tiny_vl, batch_size=2, **CPU)
    judge = scorer.judge
    prompts = ["a photo of a red cup", "a photo of two dogs", "a photo of a cat"]
    result = scorer(images(), prompts, None)
    assert result.reward.shape == (3,) and result.scored.all()
    assert ((result.reward >= 0) & (result.reward <= 1)).all()
    # the forced prefix is the tokens "Alignment Score (1-5): 1" .. ": 5" share; the digits part after it
    assert len(judge.score_ids) == 5 and judge.prefix_ids
    answers = [judge.tokenizer.decode(judge.prefix_ids + [i]) for i in judge.score_ids]
    assert answers == [f"Alignment Score (1-5): {k}" for k in range(1, 6)]
    # the reward is the expectation read at the last position of the full forward, after the prefix
    questions = [scorer.template.format(prompt=p) for p in prompts]
    inputs = judge.inputs([(im,) for im in images()], questions)
    assert all(row[-len(judge.prefix_ids):].tolist() == judge.prefix_ids for row in inputs["input_ids"])
    with torch.no_grad():
        logits = judge.model(**inputs).logits[:, -1]
    np.testing.assert_allclose(result.reward, score_expectation(logits, judge.score_ids).numpy(), atol=1e-5)
    # deterministic, and one at a time (no padding) equals the batch (left padding)
    fresh = build_scorer("unified_reward", model=tiny_vl, batch_size=1, cache_size=0, **CPU)
    np.testing.assert_allclose(fresh(images(), prompts, None).reward, result.reward, atol=1e-5)
    assert fresh(images(), prompts, None).reward.tolist() == fresh(images(), prompts, None).reward.tolist()


# ----------------------------------------------------------------------------- pairwise


def test_pairwise_prompt_holds_both_images_placeholder_runs(tiny_vl):
    scorer = build_scorer("unified_reward_pairwise", model=tiny_vl, **CPU)
    judge = scorer.judge.judge
    first, second = image(48, 40, 1), image(84, 56, 2)  # different sizes: runs of different lengths
    tokens = [int(judge.image_processor(images=[im], return_tensors="pt")["image_grid_thw"].prod()) // judge.merge**2
              for im in (first, second)]
    assert tokens[0] != tokens[1]
    inputs = judge.inputs([(first, second), (second, first)], ["Text Caption: [a cat]"] * 2)
    image_id = judge.model.config.image_token_id
    assert runs(inputs["input_ids"][0].tolist(), image_id) == tokens
    assert runs(inputs["input_ids"][1].tolist(), image_id) == tokens[::-1]  # each image its own run, in order
    assert inputs["pixel_values"].shape[0] == 2 * sum(tokens) * judge.merge**2  # four images' patches
    # the answer is forced up to where "Image 1 ..." and "Image 2 ..." part; the read tokens are their digits
    assert inputs["input_ids"][0, -len(judge.prefix_ids):].tolist() == judge.prefix_ids
    assert [judge.tokenizer.decode(judge.prefix_ids + [i]) for i in judge.choice_ids] == ["Image 1", "Image 2"]


def test_pairwise_answer_is_a_two_way_softmax_in_each_order(tiny_vl):
    import torch

    scorer = build_scorer("unified_reward_pairwise", model=tiny_vl, **CPU)
    judge = scorer.judge.judge
    a, b = image(48, 40, 1), image(56, 56, 2)
    question = scorer.judge.template.format(prompt="a cat")
    p = judge([(a, b), (b, a)], [question] * 2)
    with torch.no_grad():
        logits = judge.model(**judge.inputs([(a, b), (b, a)], [question] * 2)).logits[:, -1]
    two_way = logits[:, judge.choice_ids].softmax(-1).numpy()  # [P(image 1 better), P(image 2 better)] per order
    np.testing.assert_allclose(two_way.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p, two_way[:, 0], atol=1e-5)
    # the same judge asked for P(image 2 better) directly: the complement, order by order
    swapped = build_scorer("unified_reward_pairwise", model=tiny_vl, choices=["Image 2 is better", "Image 1 is better"],
                           **CPU)
    np.testing.assert_allclose(p + swapped.judge.judge([(a, b), (b, a)], [question] * 2), 1.0, atol=1e-6)


def test_pairwise_win_rates_sum_to_half_the_group_through_both_orders(tiny_vl, monkeypatch):
    scorer = build_scorer("unified_reward_pairwise", model=tiny_vl, **CPU)
    assert scorer_inputs(scorer_factory("unified_reward_pairwise"))["groupwise"] and not scorer.judge.symmetric
    asked = []
    prefer = scorer.judge.prefer

    def spy(images, prompts, metadata, pairs):
        asked.append(pairs.copy())
        return prefer(images, prompts, metadata, pairs)

    monkeypatch.setattr(scorer.judge, "prefer", spy)
    batch = np.stack([image(48, 40, s) for s in range(5)])
    prompts = ["a cat"] * 3 + ["a dog"] * 2
    groups = np.array([4, 4, 4, 9, 9])
    result = call_scorer(scorer, batch, prompts, None, groups=groups)
    assert result.scored.all() and ((result.reward >= 0) & (result.reward <= 1)).all()
    assert result.reward[:3].sum() == pytest.approx(1.5) and result.reward[3:].sum() == pytest.approx(1.0)
    pairs = group_pairs(groups)
    assert len(asked) == 2 and (asked[0] == pairs).all() and (asked[1] == pairs[:, ::-1]).all()  # both orders
    # the reward is the win rate of the two orders averaged (the judge's cache answers the repeat)
    records = [{}] * len(prompts)
    p_ab, p_ba = (prefer(batch, prompts, records, p).p_first for p in (pairs, pairs[:, ::-1]))
    np.testing.assert_allclose(result.reward, win_rates(groups, pairs, symmetrise(p_ab, p_ba))[0], atol=1e-12)


# ----------------------------------------------------------------------------- options


@pytest.mark.parametrize("name, options, message", [
    ("unified_reward", {"template": "Rate this image."}, "unified_reward: template must contain {prompt}"),
    ("unified_reward_pairwise", {"template": "Which is better?"}, "unified_reward_pairwise: template must contain"),
    ("unified_reward_pairwise", {"choices": ["Image 1 is better"]}, "choices must be two different"),
    ("unified_reward_pairwise", {"choices": ["Image 1", "Image 1"]}, "choices must be two different"),
    ("unified_reward_pairwise", {"choices": ["Image 1", "Image 1 is better"]}, "choices gives answers"),
    ("unified_reward", {"dtype": "int8"}, "dtype must be one of"),
    ("vlm_judge", {"answer": "choice"}, "answer must be 'yes_no' or 'score'"),
])
def test_malformed_options_are_refused_naming_them(tiny_vl, name, options, message):
    with pytest.raises(ValueError, match=message):
        build_scorer(name, model=tiny_vl, device="cpu", **options)


def test_unknown_option_names_the_scorer_and_key(tiny_vl):
    with pytest.raises(TypeError, match=r"scorer 'unified_reward' has no option\(s\) \['score_max'\]"):
        build_scorer("unified_reward", model=tiny_vl, score_max=9)


def test_the_dry_run_plans_the_default_judge_as_the_qwen_model_it_fine_tunes():
    from cluster.model_specs import PUBLISHED_REWARDS
    from rewards.unified_reward import UNIFIED_REWARD_MODEL

    assert PUBLISHED_REWARDS[UNIFIED_REWARD_MODEL] == PUBLISHED_REWARDS["Qwen/Qwen2.5-VL-7B-Instruct"]
