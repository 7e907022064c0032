"""The in-process VLM judge (`vlm_judge`) and Soft-TIFA (`soft_tifa`): the answer math against closed forms,
the cache, a tiny random Qwen2.5-VL saved locally and loaded through the scorers' own code (nothing is
downloaded), the rule-based question decomposer, prompt files with `questions`, and `python -m rewards questions`."""

import json
from pathlib import Path

import numpy as np
import pytest

from rewards.base import ScorerInputError, build_scorer
from rewards.prompts import load_prompts
from rewards.questions import (
    parse_prompt,
    plural,
    questions_for,
    questions_for_include,
    singular,
    write_questions,
)
from rewards.soft_tifa import soft_tifa
from rewards.vlm_judge import JudgeCache, expand_image_tokens, p_yes, score_expectation
from tests.script_loader import load_script

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "assets" / "prompts"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"]
CORPUS = ["system user assistant You are a helpful assistant.", 'Does this image show "a photo of a red cup"?',
          "Answer yes or no. Yes No yes no YES NO", "Is there a cat? Are there exactly two dogs? Is the cup red?",
          "How well does this image show it? Answer with one digit from 1 (not at all) to 9 (perfectly)."]
# Qwen2-VL's chat format for one user turn (the published template also adds a default system turn).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def save_tiny_qwen_vl(folder: Path) -> str:
    """A random Qwen2.5-VL (1 text layer of width 32, 1 vision block of width 16) with a byte-level BPE
    tokenizer trained here (Qwen's special tokens, a chat template) and Qwen's image processor, saved together."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Tokenizer,
        Qwen2VLImageProcessorPil,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = Qwen2Tokenizer(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0]),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    out = folder / "qwen_vl"
    Qwen2_5_VLForConditionalGeneration(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=56 * 56 * 2).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory):
    return save_tiny_qwen_vl(tmp_path_factory.mktemp("vl"))


def images(b=3, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, 256, (48, 40, 3), dtype=np.uint8) for _ in range(b)])


# ----------------------------------------------------------------------------- the math


def test_p_yes_is_the_two_way_softmax_of_the_yes_and_no_logits():
    import torch

    logits = torch.tensor([[2.0, 0.5, -1.0, 3.0], [0.0, 0.0, 0.0, 0.0], [-4.0, 1.0, 2.0, 0.0]])
    assert torch.allclose(p_yes(logits, [0], [1]), torch.sigmoid(logits[:, 0] - logits[:, 1]))
    # several spellings per word: p(yes) = sum of their probabilities, over both words' sum
    e = logits.exp()
    expected = (e[:, 0] + e[:, 3]) / (e[:, 0] + e[:, 3] + e[:, 1] + e[:, 2])
    assert torch.allclose(p_yes(logits, [0, 3], [1, 2]), expected)
    assert p_yes(logits.bfloat16(), [0], [1]).dtype == torch.float32  # read in fp32 whatever the model ran in


def test_score_expectation_maps_the_expected_digit_to_unit_range():
    import torch

    n = 5
    one_hot = torch.full((n, n + 2), -1e4)
    for k in range(n):
        one_hot[k, k + 1] = 10.0
    ids = list(range(1, n + 1))
    assert torch.allclose(score_expectation(one_hot, ids), torch.arange(n) / (n - 1))  # certain k -> (k - 1) / (N - 1)
    assert torch.allclose(score_expectation(torch.zeros(1, n + 2), ids), torch.tensor([0.5]))  # uniform -> the middle
    logits = torch.tensor([[0.0, 1.0, 2.0, 0.5, -1.0, 0.0, 3.0]])
    probs = logits[0, 1:6].softmax(-1)
    assert torch.allclose(score_expectation(logits, ids), ((probs * torch.arange(1.0, 6.0)).sum() - 1) / 4)


def test_soft_tifa_is_the_mean_and_the_all_yes_verdict():
    assert soft_tifa([0.9, 0.6, 0.3]) == (pytest.approx(0.6), 0.0)
    assert soft_tifa([0.9, 0.51]) == (pytest.approx(0.705), 1.0)
    assert soft_tifa([0.5]) == (0.5, 0.0)  # 0.5 is not a yes
    with pytest.raises(ValueError, match="at least one question"):
        soft_tifa([])


def test_cache_is_bounded_least_recently_used_and_counts():
    cache = JudgeCache(2)
    cache.put(("a", "q"), 0.1)
    cache.put(("b", "q"), 0.2)
    assert cache.get(("a", "q")) == 0.1  # a is now the most recent
    cache.put(("c", "q"), 0.3)  # evicts b
    assert cache.get(("b", "q")) is None and cache.get(("c", "q")) == 0.3 and len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 1)
    off = JudgeCache(0)
    off.put(("a", "q"), 1.0)
    assert len(off) == 0


def test_image_placeholder_expands_once_and_only_once():
    assert expand_image_tokens("<s><img>Q", "<img>", 3) == "<s><img><img><img>Q"
    with pytest.raises(ValueError, match="2 image placeholders"):
        expand_image_tokens("<img><img>Q", "<img>", 3)


# ----------------------------------------------------------------------------- the tiny judge


def test_vlm_judge_loads_the_saved_model_and_scores_a_batch(tiny_vl):
    scorer = build_scorer("vlm_judge", model=tiny_vl, device="cpu", dtype="float32", batch_size=2)
    prompts = ["a photo of a red cup", "a photo of two dogs", "a photo of a cat"]
    first = scorer(images(), prompts, None)
    assert first.reward.shape == (3,) and first.scored.all()
    assert ((first.reward > 0) & (first.reward < 1)).all()
    assert type(scorer.judge.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    # one at a time (no padding) equals the batch (left padding): the answer position is each row's last
    fresh = build_scorer("vlm_judge", model=tiny_vl, device="cpu", dtype="float32", batch_size=1, cache_size=0)
    np.testing.assert_allclose(fresh(images(), prompts, None).reward, first.reward, atol=1e-5)
    assert fresh(images(), prompts, None).reward.tolist() == fresh(images(), prompts, None).reward.tolist()


def test_vlm_judge_cache_answers_repeated_pairs_without_a_forward(tiny_vl, monkeypatch):
    scorer = build_scorer("vlm_judge", model=tiny_vl, device="cpu", dtype="float32")
    batch = images(2)
    batch_twice = np.concatenate([batch, batch])  # a pair repeated within one batch is judged once
    first = scorer(batch_twice, ["a cat"] * 4, None)
    assert first.reward[:2].tolist() == first.reward[2:].tolist()
    assert len(scorer.judge.cache) == 2

    def no_forward(*args):
        raise AssertionError("a cached pair reached the model")

    monkeypatch.setattr(scorer.judge, "_forward", no_forward)
    hits = scorer.judge.cache.hits
    assert scorer(batch, ["a cat"] * 2, None).reward.tolist() == first.reward[:2].tolist()
    assert scorer.judge.cache.hits == hits + 2


def test_vlm_judge_score_mode_and_bf16(tiny_vl):
    scorer = build_scorer("vlm_judge", model=tiny_vl, device="cpu", dtype="bfloat16", answer="score", score_max=5)
    result = scorer(images(2), ["a dog", "a cat"], None)
    assert ((result.reward >= 0) & (result.reward <= 1)).all() and len(scorer.judge.score_ids) == 5
    assert "1 (not at all) to 5 (perfectly)" in scorer.templates[None]


def test_vlm_judge_rejects_bad_options(tiny_vl):
    for options, message in [({"answer": "maybe"}, "answer must be"), ({"answer": "score", "score_max": 10}, "2..9"),
                             ({"dtype": "int8"}, "dtype must be one of")]:
        with pytest.raises(ValueError, match=message):
            build_scorer("vlm_judge", model=tiny_vl, device="cpu", **options)


def test_soft_tifa_averages_the_judges_answers_over_the_records_questions(tiny_vl):
    options = {"model": tiny_vl, "device": "cpu", "dtype": "float32"}
    scorer = build_scorer("soft_tifa", **options)
    record = {"prompt": "a red cup", "questions": ["Is there a cup?", "Is the cup red?", "Is it a photo?"]}
    batch = images(2)
    result = scorer(batch, ["a red cup", "a photo of two dogs"], [record, {}])  # the second is decomposed
    judge = scorer.judge
    first = judge(list(batch[:1]) * 3, [f"{q} Answer yes or no." for q in record["questions"]])
    second = judge(list(batch[1:]) * 2, ["Is there a dog? Answer yes or no.", "Are there exactly two dogs? Answer yes or no."])
    assert result.reward.tolist() == pytest.approx([first.mean(), second.mean()])
    assert result.diagnostics["correct"].tolist() == [float((first > 0.5).all()), float((second > 0.5).all())]
    assert result.diagnostics["min_p_yes"].tolist() == pytest.approx([first.min(), second.min()])
    assert result.diagnostics["questions"].tolist() == [3.0, 2.0]


def test_soft_tifa_input_errors_name_the_prompt(tiny_vl):
    strict = build_scorer("soft_tifa", model=tiny_vl, device="cpu", dtype="float32", require_questions=True)
    with pytest.raises(ScorerInputError, match="'a photo of a cat' has no `questions`"):
        strict(images(1), ["a photo of a cat"], [{}])
    lenient = build_scorer("soft_tifa", model=tiny_vl, device="cpu", dtype="float32")
    with pytest.raises(ScorerInputError, match="'a cat sleeping on a sofa'.*give the record a `questions` list"):
        lenient(images(1), ["a cat sleeping on a sofa"], None)
    with pytest.raises(ValueError, match="must contain {question}"):
        build_scorer("soft_tifa", model=tiny_vl, device="cpu", question_template="{q}?")


# ----------------------------------------------------------------------------- questions


@pytest.mark.parametrize("prompt, questions", [
    ("a photo of two red cups and a dog left of a cat",
     ["Is there a cup?", "Are there exactly two cups?", "Are the cups red?", "Is there a cat?", "Is there a dog?",
      "Is the dog to the left of the cat?"]),
    ("a photo of an orange umbrella", ["Is there an umbrella?", "Is the umbrella orange?"]),
    ("a photo of four mice", ["Is there a mouse?", "Are there exactly four mice?"]),
    ("A photo of a bench above three knives.",
     ["Is there a knife?", "Are there exactly three knives?", "Is there a bench?", "Is the bench above the knives?"]),
    ("a yellow boat and a blue teddy bear", ["Is there a boat?", "Is the boat yellow?", "Is there a teddy bear?",
                                             "Is the teddy bear blue?"]),
])
def test_decomposer_reads_geneval_template_prompts(prompt, questions):
    assert questions_for({"prompt": prompt}) == questions


@pytest.mark.parametrize("prompt", ["a cat sleeping on a sofa", "cats", "a photo of a dog left of a cat above a cup",
                                    "a photo of a cat and dog"])
def test_decomposer_refuses_free_text(prompt):
    with pytest.raises(ValueError, match=f"prompt {prompt!r}"):
        parse_prompt(prompt)


def test_decomposer_text_and_metadata_agree_on_the_shipped_geneval_sets():
    """The prompt parser recovers every shipped GenEval record's own metadata questions, and the shipped question
    files are what `python -m rewards questions` writes from them."""
    make_text_prompts = load_script("scripts/make_text_prompts.py")
    for word, words in make_text_prompts.COCO_PLURALS.items():
        assert (plural(word), singular(words)) == (words, word)
    for split in ("train", "test"):
        records = load_prompts(ASSETS / f"geneval_{split}.jsonl")
        for record in records:
            assert questions_for_include(parse_prompt(record["prompt"])) == questions_for(record), record["prompt"]
        shipped = load_prompts(ASSETS / f"geneval_questions_{split}.jsonl")
        assert shipped == [{**r, "questions": questions_for(r)} for r in records]


def test_questions_command_round_trip(tmp_path, capsys):
    from rewards.__main__ import main

    source = tmp_path / "in.txt"
    source.write_text("a photo of two cats\n\na photo of a red cup\n", encoding="utf-8")
    assert main(["questions", str(source), str(tmp_path / "out.jsonl")]) == 0
    assert "wrote 2 records" in capsys.readouterr().out
    records = load_prompts(tmp_path / "out.jsonl")
    assert records == [{"prompt": "a photo of two cats", "questions": ["Is there a cat?", "Are there exactly two cats?"]},
                       {"prompt": "a photo of a red cup", "questions": ["Is there a cup?", "Is the cup red?"]}]
    kept = tmp_path / "kept.jsonl"  # a record's own questions are kept, not re-derived
    kept.write_text(json.dumps({"prompt": "a cat on a sofa", "questions": ["Is the cat on a sofa?"]}) + "\n")
    assert write_questions(kept, tmp_path / "kept_out.jsonl") == 1
    assert load_prompts(tmp_path / "kept_out.jsonl")[0]["questions"] == ["Is the cat on a sofa?"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a cat\n\na cat sleeping on a sofa\n", encoding="utf-8")
    with pytest.raises(SystemExit, match=rf"{bad}:3: prompt 'a cat sleeping on a sofa'"):
        main(["questions", str(bad), str(tmp_path / "never.jsonl")])
    assert not (tmp_path / "never.jsonl").exists()
    with pytest.raises(SystemExit, match="must be a .jsonl"):
        main(["questions", str(source), str(tmp_path / "out.txt")])


# ----------------------------------------------------------------------------- prompt files with questions


def test_prompt_files_carry_questions_in_either_record_kind(tmp_path):
    path = tmp_path / "p.jsonl"
    geneval = {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog",
               "questions": ["Is there a dog?"]}
    path.write_text(json.dumps(geneval) + "\n")
    assert load_prompts(path)[0]["questions"] == ["Is there a dog?"]
    path.write_text(json.dumps({"prompt": "a dog", "tag": "x", "questions": ["Is there a dog?"]}) + "\n")
    assert load_prompts(path)[0]["questions"] == ["Is there a dog?"]


@pytest.mark.parametrize("questions, field", [
    ([], "questions: expected a non-empty list"),
    ("Is there a dog?", "questions: expected a non-empty list"),
    (["Is there a dog?", ""], "questions[1]: expected a non-empty string, got ''"),
    (["Is there a dog?", 3], "questions[1]: expected a non-empty string, got 3"),
])
@pytest.mark.parametrize("kind", ["plain", "geneval"])
def test_bad_questions_name_file_line_and_field(tmp_path, questions, field, kind):
    base = ({"prompt": "a dog"} if kind == "plain" else
            {"tag": "single_object", "include": [{"class": "dog", "count": 1}], "prompt": "a photo of a dog"})
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(base) + "\n\n" + json.dumps({**base, "questions": questions}) + "\n")
    with pytest.raises(ValueError) as error:
        load_prompts(path)
    assert str(error.value).startswith(f"{path}:3: ") and field in str(error.value)


# ----------------------------------------------------------------------------- the memory plan's judges


def test_published_judge_sizes_are_the_meta_device_counts_of_their_configs():
    """cluster/model_specs.py's PUBLISHED_REWARDS for the default judges (the dry run's memory plan without the
    weights at hand) equal Qwen2_5_VLForConditionalGeneration built on the meta device from the published
    configs (Qwen/Qwen2.5-VL-{7B,3B}-Instruct config.json)."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from cluster.model_specs import PUBLISHED_REWARDS

    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2, window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}
    published = {
        "Qwen/Qwen2.5-VL-7B-Instruct": (dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                                             num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4), False),
        "Qwen/Qwen2.5-VL-3B-Instruct": (dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008,
                                             num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2), True),
    }
    for hub_id, (text, tied) in published.items():
        config = Qwen2_5_VLConfig(text_config={**text, "rope_parameters": rope}, tie_word_embeddings=tied,
                                  vision_config={**vision, "out_hidden_size": text["hidden_size"]})
        with torch.device("meta"):
            model = Qwen2_5_VLForConditionalGeneration(config)
        assert PUBLISHED_REWARDS[hub_id].params == sum(p.numel() for p in model.parameters()), hub_id
