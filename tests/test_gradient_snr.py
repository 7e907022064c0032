"""benchmarks/gradient_snr.py: the cosine estimator, and a smoke run on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from tests.script_loader import load_script


def _module():
    return load_script("benchmarks/gradient_snr.py")


@pytest.mark.unit
def test_mean_pairwise_cosine():
    cosine = _module().mean_pairwise_cosine
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    assert cosine([a, 3 * a]) == (pytest.approx(1.0), 0.0)
    assert cosine([a, -a])[0] == pytest.approx(-1.0)
    assert cosine([a, b])[0] == pytest.approx(0.0)
    # Pairs (a, a), (a, b), (a, b): mean of 1, 0, 0.
    assert cosine([a, a, b])[0] == pytest.approx(1 / 3)


def test_smoke_on_the_tiny_model(tiny_sd3_path, capsys):
    result = _module().main(["--batches", "2", "--prompts-per-batch", "2", f"model.path={tiny_sd3_path}",
                             "sampling.group_size=4", "sampling.num_steps=2", "data.images_per_iteration=8"])
    assert result["algorithm"] == "flow_grpo" and -1.0 <= result["cosine"] <= 1.0
    assert math.isfinite(result["cosine_err"]) and result["seconds_per_batch"] > 0
    assert "mean pairwise cosine" in capsys.readouterr().out
