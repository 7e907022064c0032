"""Which training prompts an iteration samples (data.prompt_order)."""

from __future__ import annotations

import collections
import json

import pytest

from cluster.config import REPO_ROOT, ConfigError, load_config
from cluster.preflight import preflight
from rewards.prompt_order import (
    MirroredPromptOrder,
    mirrored_prompts_for_iteration,
    prompt_mirrors,
    prompts_for_iteration,
    tag_balanced_prompts_for_iteration,
    tag_turns,
)
from rewards.prompts import binding_mirrors, layout_mirrors, load_prompts, prompt_tags
from tests.tiny_models import FLOWGRPO

TRAIN = REPO_ROOT / "assets" / "prompts" / "shapes_train.jsonl"


def _tags() -> list[str]:
    return [json.loads(line)["tag"] for line in TRAIN.read_text().splitlines() if line.strip()]


def test_tag_balanced_gives_every_tag_equal_turns_and_walks_each_tags_prompts():
    tags = _tags()
    counts = collections.Counter(tags)
    assert counts["color_attr"] > 20 * counts["single_object"]  # the file itself is far from balanced
    seen = collections.Counter()
    picked: dict[str, list[int]] = collections.defaultdict(list)
    for it in range(12):
        for i in tag_balanced_prompts_for_iteration(tags, 8, seed=0, iteration=it):
            seen[tags[i]] += 1
            picked[tags[i]].append(i)
    assert max(seen.values()) - min(seen.values()) <= 1  # 96 slots over 6 tags: 16 each
    # within a tag, one pass visits each of its prompts once before any repeats
    position = picked["position"][: counts["position"]]
    assert sorted(position) == sorted(i for i, t in enumerate(tags) if t == "position")


def test_tag_balanced_is_a_pure_function_of_seed_and_iteration():
    tags = _tags()
    a = [tag_balanced_prompts_for_iteration(tags, 8, 3, it) for it in range(5)]
    b = [tag_balanced_prompts_for_iteration(tags, 8, 3, it) for it in range(5)]
    assert a == b
    assert a != [tag_balanced_prompts_for_iteration(tags, 8, 4, it) for it in range(5)]
    assert a[0] != prompts_for_iteration(len(tags), 8, 3, 0)


def test_untagged_records_are_named_at_load_and_in_preflight(tmp_path):
    records = [json.loads(x) for x in TRAIN.read_text().splitlines()[:8]]
    del records[2]["tag"]
    with pytest.raises(ValueError, match=r"record 3 has no 'tag'.*tag_balanced"):
        prompt_tags(records, "train.jsonl")
    path = tmp_path / "train.txt"  # plain prompts carry no tags
    path.write_text("a photo of a circle\na photo of a square\n")
    cfg = load_config(FLOWGRPO, [f"data.train_prompts={path}", "data.prompt_order=tag_balanced",
                             "rewards.scorers=[{name: shapes_quality}]"])
    errors = {c.key: c.message for c in preflight(cfg, cluster_resources={"CPU": 64}).errors}
    assert "record 1 has no 'tag'" in errors["data.train_prompts"]
    ok = load_config(FLOWGRPO, [f"data.train_prompts={path}", "rewards.scorers=[{name: shapes_quality}]"])
    assert "data.train_prompts" not in {c.key for c in preflight(ok, cluster_resources={"CPU": 64}).errors}


def test_tag_weights_give_a_tag_more_turns_and_still_walk_its_prompts():
    tags = _tags()
    weights = {"position": 3, "counting": 2}
    assert tag_turns(sorted(set(tags)), weights) == [
        "color_attr", "colors", "counting", "position", "single_object", "two_object", "counting", "position", "position"]
    seen = collections.Counter()
    picked: dict[str, list[int]] = collections.defaultdict(list)
    for it in range(9):  # 72 slots: 8 rounds of 9 turns
        for i in tag_balanced_prompts_for_iteration(tags, 8, seed=0, iteration=it, weights=weights):
            seen[tags[i]] += 1
            picked[tags[i]].append(i)
    assert seen["position"] == 24 and seen["counting"] == 16 and seen["colors"] == 8
    # the extra turns continue the tag's walk: one pass visits each position prompt once before repeats
    n = sum(t == "position" for t in tags)
    assert sorted(picked["position"][:n]) == sorted(i for i, t in enumerate(tags) if t == "position")
    # no weights (or all ones) is the unweighted order, bit for bit
    ones = {t: 1 for t in set(tags)}
    for it in range(3):
        plain = tag_balanced_prompts_for_iteration(tags, 8, 5, it)
        assert plain == tag_balanced_prompts_for_iteration(tags, 8, 5, it, weights=ones)


def test_bad_tag_weights_are_named():
    with pytest.raises(ConfigError, match="data.tag_weights needs data.prompt_order='tag_balanced'"):
        load_config(FLOWGRPO, ["data.tag_weights={position: 2}"])
    with pytest.raises(ConfigError, match=r"data.tag_weights.position must be >= 1 \(got 0\)"):
        load_config(FLOWGRPO, ["data.prompt_order=tag_balanced", "data.tag_weights={position: 0}"])
    cfg = load_config(FLOWGRPO, ["data.prompt_order=tag_balanced", "data.tag_weights={positon: 2}"])
    errors = {c.key: c.message for c in preflight(cfg, cluster_resources={"CPU": 64}).errors}
    assert "data.tag_weights names tags ['positon']" in errors["data.train_prompts"]


def _relation(a: str, relation: str, b: str) -> dict:
    """GenEval's record for 'a photo of an {a} {relation} a {b}'."""
    return {"tag": "position", "prompt": f"a {a} {relation} a {b}",
            "include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [relation, 0]}]}


def test_layout_mirrors_are_the_same_objects_in_the_opposite_layout():
    records = [
        _relation("circle", "left of", "square"),   # circle | square
        _relation("square", "right of", "circle"),  # circle | square, other wording
        _relation("square", "left of", "circle"),   # square | circle
        _relation("circle", "above", "square"),     # vertical: never the mirror of a horizontal layout
        _relation("triangle", "left of", "square"),  # its mirror is not in the file
        {"tag": "two_object", "prompt": "a circle and a square",
         "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}]},
    ]
    assert layout_mirrors(records) == [[2], [2], [0, 1], [], [], []]


def _binding(a: str, colour_a: str, b: str, colour_b: str) -> dict:
    """GenEval's record for 'a photo of a {colour_a} {a} and a {colour_b} {b}'."""
    return {"tag": "color_attr", "prompt": f"a {colour_a} {a} and a {colour_b} {b}",
            "include": [{"class": a, "count": 1, "color": colour_a}, {"class": b, "count": 1, "color": colour_b}]}


def test_binding_mirrors_are_the_same_objects_with_the_colours_exchanged():
    records = [
        _binding("circle", "red", "square", "blue"),
        _binding("square", "blue", "circle", "red"),    # the same binding, other wording
        _binding("circle", "blue", "square", "red"),    # the colours exchanged
        _binding("circle", "red", "triangle", "blue"),  # its mirror is not in the file
        _binding("circle", "red", "circle", "blue"),    # one class twice: exchanging changes nothing
        {"tag": "colors", "prompt": "a red circle", "include": [{"class": "circle", "count": 1, "color": "red"}]},
        _relation("circle", "left of", "square"),
    ]
    assert binding_mirrors(records) == [[2], [2], [0, 1], [], [], [], []]


def test_prompt_mirrors_joins_the_kinds_the_config_asks_for_and_names_a_file_without_any():
    records = load_prompts(TRAIN)
    tags = prompt_tags(records, str(TRAIN))
    both = prompt_mirrors(records, load_config(None, ["data.mirror_position_prompts=true",
                                                      "data.mirror_binding_prompts=true"]).data)
    assert {tags[i] for i, m in enumerate(both) if m} == {"position", "color_attr"}
    assert sum(map(bool, both)) == sum(t in ("position", "color_attr") for t in tags)
    only_binding = prompt_mirrors(records, load_config(None, ["data.mirror_position_prompts=false",
                                                              "data.mirror_binding_prompts=true"]).data)
    assert only_binding == binding_mirrors(records)
    relations = [r for r in records if r["tag"] == "position"]
    with pytest.raises(ValueError, match="data.mirror_binding_prompts is set but no record of .* has a mirror"):
        prompt_mirrors(relations, load_config(None, ["data.mirror_binding_prompts=true"]).data)
    with pytest.raises(ConfigError, match="data.mirror_binding_prompts needs data.prompt_order='tag_balanced'"):
        load_config(FLOWGRPO, ["data.mirror_binding_prompts=true"])


def test_mirrored_order_trains_each_relation_prompt_beside_a_mirror_and_stays_a_pure_function():
    records = load_prompts(TRAIN)
    tags, mirrors = prompt_tags(records, str(TRAIN)), layout_mirrors(records)
    assert sum(map(bool, mirrors)) == sum(t == "position" for t in tags)  # every training relation has one
    weights = {"position": 2, "counting": 3}
    seen = collections.Counter()
    for it in range(40):
        idx = mirrored_prompts_for_iteration(tags, mirrors, 8, seed=0, iteration=it, weights=weights)
        assert len(idx) == 8
        assert idx == mirrored_prompts_for_iteration(tags, mirrors, 8, seed=0, iteration=it, weights=weights)
        k = 0
        while k < len(idx):  # a relation prompt comes as (drawn, mirror), side by side in one iteration
            if mirrors[idx[k]]:
                assert idx[k + 1] in mirrors[idx[k]]
                k += 1
            k += 1
        seen.update(tags[i] for i in idx)
    # a position turn takes two slots: a round is 9 turns (6 tags, +1 position, +2 counting), 11 prompts
    assert seen["position"] / sum(seen.values()) == pytest.approx(4 / 11, abs=0.02)
    # without mirrors it is the plain tag-balanced order
    none = [[] for _ in tags]
    assert all(mirrored_prompts_for_iteration(tags, none, 8, 3, it, weights)
               == tag_balanced_prompts_for_iteration(tags, 8, 3, it, weights) for it in range(5))


def test_mirrored_order_refuses_what_cannot_hold_its_pairs():
    tags, mirrors = ["position", "position"], [[1], [0]]
    with pytest.raises(ValueError, match="cannot hold the prompt pairs"):
        mirrored_prompts_for_iteration(tags, mirrors, 3, 0, 0)
    with pytest.raises(ConfigError, match="data.mirror_position_prompts needs data.prompt_order='tag_balanced'"):
        load_config(FLOWGRPO, ["data.mirror_position_prompts=true"])


def test_the_run_remembers_its_mirrored_order_and_replays_it_for_any_other_iteration():
    records = load_prompts(TRAIN)
    tags, mirrors = prompt_tags(records, str(TRAIN)), layout_mirrors(records)
    weights = {"position": 2}
    pure = [mirrored_prompts_for_iteration(tags, mirrors, 8, 7, it, weights) for it in range(13)]
    order = MirroredPromptOrder(tags, mirrors, 8, 7, weights)
    assert [order(it) for it in range(12)] == pure[:12]  # consecutive: each call continues the last
    assert order(11) == pure[11]  # the same iteration again (a lost group resampled)
    assert order(3) == pure[3] and order(12) == pure[12]  # back (a resume), then a jump forward
