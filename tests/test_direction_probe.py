"""benchmarks/direction_probe.py: the mirror of a position record, and the relation it reads from renders."""

from __future__ import annotations

import numpy as np
import pytest

from rewards.shapes.world import all_records, render, sample_scene
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
        assert mirror["include"][1]["position"][0] == probe.MIRROR[relation]
        assert [c["class"] for c in mirror["include"]] == [c["class"] for c in record["include"]]
        assert probe.mirrored(mirror) == record
        # a scene that satisfies the record reads as the asked relation, never its mirror
        found = probe.relations_found(render(sample_scene(record, rng)), record)
        assert relation in found and probe.MIRROR[relation] not in found
        # a blank image has no objects to relate
        assert probe.relations_found(np.full((32, 32, 3), 255, dtype=np.uint8), record) is None
