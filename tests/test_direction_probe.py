"""benchmarks/direction_probe.py: the mirror of a position record, and the relation it reads from renders."""

from __future__ import annotations

import numpy as np
import pytest

from rewards.shapes.world import MIRROR, all_records, render, sample_scene
from tests.script_loader import load_script

pytestmark = pytest.mark.unit


def test_mirrors_swap_the_relation_and_renders_read_back_the_asked_one():
    probe = load_script("benchmarks/direction_probe.py")
    rng = np.random.default_rng(0)
    records = all_records()["position"]
    assert len(records) == 24
    for record in records:
        mirror = probe.mirrored(record)
        relation = record["include"][1]["position"][0]
        assert mirror["include"][1]["position"][0] == MIRROR[relation]
        assert [c["class"] for c in mirror["include"]] == [c["class"] for c in record["include"]]
        assert probe.mirrored(mirror) == record
        # a scene that satisfies the record reads as the asked relation, never its mirror
        found = probe.relations_found(render(sample_scene(record, rng)), record)
        assert relation in found and MIRROR[relation] not in found
        # a blank image has no objects to relate
        assert probe.relations_found(np.full((32, 32, 3), 255, dtype=np.uint8), record) is None


def test_swapped_subject_keeps_the_relation_and_target_but_draws_another_shape():
    probe = load_script("benchmarks/direction_probe.py")
    for record in all_records()["position"]:
        swapped = probe.swapped_subject(record)
        (target, subject), (s_target, s_subject) = record["include"], swapped["include"]
        assert s_target["class"] == target["class"] and s_subject["position"] == subject["position"]
        assert s_subject["class"] not in (subject["class"], target["class"])


def test_the_tower_cosines_per_layer_and_the_word_effects_on_the_shipped_base():
    from models.config import ModelConfig
    from models.policy import Policy

    probe = load_script("benchmarks/direction_probe.py")
    policy = Policy.from_config(ModelConfig(path="assets/models/shapes-sd3-tiny", resolution=32, guidance_scale=1.0))
    record = all_records()["position"][0]
    layers = probe.layer_cosines(policy, record)
    # the embedding plus each of the towers' 3 layers; the last is what token_cosines reports
    assert [len(t) for t in layers] == [4, 4]
    assert [t[-1] for t in layers] == probe.token_cosines(policy, record)
    assert all(-1.0 <= c <= 1.0 + 1e-6 for t in layers for c in t)
    effects = probe.word_effects(policy, seeds=1, steps=2, guidance=1.0, levels=(1.0, 0.5))
    assert set(effects) == {"sigma_1", "sigma_0.5"}
    assert all(np.isfinite(v) and v > 0 for e in effects.values() for v in e.values())
