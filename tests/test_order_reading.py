"""benchmarks/order_reading.py: relation and colour-binding prompts scored against their role-swapped
counterparts, with the real detector and a real sampler."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rewards.shapes import render, sample_scene
from rewards.shapes.world import color_attr, position, two_object
from tests.script_loader import load_script


@pytest.mark.unit
@pytest.mark.parametrize("record", [position("circle", "left of", "square"), position("triangle", "above", "circle"),
                                    color_attr("circle", "red", "square", "blue")])
def test_a_scene_that_reads_the_order_fails_its_counterpart(record):
    """A rendered scene satisfying the prompt is correct against it and wrong against the swapped roles;
    a scene of the counterpart is the reverse."""
    order = load_script("benchmarks/order_reading.py")
    rng = np.random.default_rng(0)
    swapped = order.role_swapped(record)
    assert swapped != record and order.role_swapped(swapped) == record
    images = np.stack([render(sample_scene(record, rng)) for _ in range(4)])
    own, other = order.order_verdicts(images, record)
    assert own.tolist() == [1.0] * 4 and other.tolist() == [0.0] * 4
    images = np.stack([render(sample_scene(swapped, rng)) for _ in range(4)])
    own, other = order.order_verdicts(images, record)
    assert own.tolist() == [0.0] * 4 and other.tolist() == [1.0] * 4


@pytest.mark.unit
def test_only_two_object_order_prompts_have_a_counterpart():
    order = load_script("benchmarks/order_reading.py")
    with pytest.raises(ValueError, match="position or color_attr"):
        order.role_swapped(two_object("circle", "square"))


@pytest.mark.component
def test_the_base_and_a_missing_checkpoint(tiny_sd3_path, tmp_path):
    order = load_script("benchmarks/order_reading.py")
    out = tmp_path / "order.json"
    model = [f"model.path={tiny_sd3_path}", "model.guidance_scale=2.0", "sampling.eval_num_steps=2"]
    argv = ["--images-per-prompt", "2", "--output", str(out), *model]
    summary = order.main(argv)
    assert set(summary) == {"position", "color_attr", "overall"}
    for d in summary.values():
        assert d["difference"]["mean"] == pytest.approx(d["prompt"]["mean"] - d["swapped"]["mean"])
        assert d["difference"]["ci"][0] <= d["difference"]["mean"] <= d["difference"]["ci"][1]
    saved = json.loads(out.read_text())
    assert saved["tags"] == json.loads(json.dumps(summary))
    assert len(saved["images"]["own"]) == 2 * len(set(saved["images"]["prompt"]))
    # the same policy against itself: the same images, so the paired change is exactly zero
    again = order.main(["--images-per-prompt", "2", "--against", str(out), *model])
    assert all(d["mean"] == 0.0 and d["ci"] == [0.0, 0.0] for d in again["change"].values())
    with pytest.raises(ValueError, match="different prompts or numbers of images"):
        order.main(["--images-per-prompt", "1", "--against", str(out), *model])
    with pytest.raises(ValueError, match="holds no checkpoint"):
        order.main(["--checkpoint", str(tmp_path / "nothing"), *argv])
