"""Device choice (models/devices.py), the actors' environment and the eval grid's scale: small pure
decisions the GPU path depends on, checked on CPU."""

from __future__ import annotations

import pytest
import torch

from cluster.actors import _env
from cluster.config import load_config
from cluster.evaluation import display_scale
from models.devices import resolve_device, visible_index
from tests.tiny_models import FLOWGRPO

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("assigned", "visible", "index"),
    [
        (["3"], "3", 0),  # Ray's per-actor masking: the assigned GPU is the only one visible
        (["2"], "0,1,2,3", 2),  # masking off (RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES): pick it by position
        (["5", "6"], "6,5", 1),
        ([], None, 0),  # outside Ray
        (["1"], None, 1),  # every GPU visible: indices are the ids
    ],
)
def test_visible_index_follows_rays_assignment(assigned, visible, index):
    assert visible_index(assigned, visible) == index


def test_a_hidden_assigned_gpu_is_an_error():
    with pytest.raises(RuntimeError, match="assigned GPU 4, but CUDA_VISIBLE_DEVICES='0,1' hides it"):
        visible_index(["4"], "0,1")


def test_auto_picks_the_visible_device_and_logs_it(capsys):
    """'auto' is the GPU when this process sees one (launch.py eval on a GPU machine), else the CPU."""
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto", "eval").type == expected
    out = capsys.readouterr().out
    assert ("[flowray] eval: device cpu" if expected == "cpu" else "[flowray] eval: Ray GPU ids") in out
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="learner-0 was given a GPU but CUDA is not available"):
            resolve_device("cuda", "learner-0")
    with pytest.raises(ValueError, match="expected one of"):
        resolve_device("gpu", "rollout-0")


def test_actors_get_the_hub_token_only_when_set(monkeypatch):
    cfg = load_config(FLOWGRPO, [])
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert "HF_TOKEN" not in _env(cfg)["env_vars"]
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    assert _env(cfg)["env_vars"]["HF_TOKEN"] == "hf_test"


@pytest.mark.parametrize(("side", "scale"), [(32, 4), (64, 2), (128, 1), (512, 1), (720, 1)])
def test_eval_grids_enlarge_only_tiny_images(side, scale):
    assert display_scale(side) == scale
