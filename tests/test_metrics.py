"""Per-category training reward (reward/tag/<tag>) from an iteration's groups."""

import math

import numpy as np
import pytest

from cluster.metrics import reward_by_tag


def test_reward_by_tag_averages_images_of_each_tag_and_skips_masked_scores():
    reward = np.array([1.0, 0.0, 0.5, 0.5, np.nan, 1.0, 0.25, 0.75])
    out = reward_by_tag(reward, ["counting", "position", "counting", None], [2, 2, 2, 2])
    # counting: images 0, 1 and 5 (image 4 is masked); position: 2, 3; the untagged group is left out.
    assert out == {"reward/tag/counting": pytest.approx(2 / 3), "reward/tag/position": 0.5}


def test_reward_by_tag_names_a_size_mismatch():
    with pytest.raises(ValueError, match="add up to 4, but there are 5 rewards"):
        reward_by_tag(np.ones(5), ["a", "b"], [2, 2])


def test_a_group_whose_scores_are_all_masked_gives_no_key():
    out = reward_by_tag(np.array([math.nan, math.nan, 1.0]), ["colors", "single_object"], [2, 1])
    assert out == {"reward/tag/single_object": 1.0}
