"""benchmarks/reward_variance.py: the variance split, and a smoke run on the tiny model."""

from __future__ import annotations

import numpy as np
import pytest

from tests.script_loader import load_script


def _module():
    return load_script("benchmarks/reward_variance.py")


@pytest.mark.unit
def test_variance_share_separates_initial_noise_from_sde_noise():
    share = _module().variance_share
    # Rewards set by the initial noise alone: no variance within a group.
    by_init = np.array([[[0.0, 0.0], [1.0, 1.0]]])
    assert share(by_init) == (0.0, 0.25)
    # Rewards set by the SDE noise alone: every group spans the same values.
    by_sde = np.array([[[0.0, 1.0], [0.0, 1.0]]])
    assert share(by_sde) == (0.25, 0.25)


def test_smoke_on_the_tiny_model(tiny_sd3_path, capsys):
    result = _module().main(["--prompts", "2", "--inits", "2", f"model.path={tiny_sd3_path}",
                             "sampling.group_size=2", "sampling.num_steps=2"])
    assert result["algorithm"] == "flow_grpo" and 0.0 <= result["within"] <= result["total"] + 1e-12
    assert "share from the SDE steps" in capsys.readouterr().out
