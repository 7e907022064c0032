"""The installed packages satisfy pyproject's floors, and the keywords the code relies on take effect
(diffusers < 0.40 accepts `from_pretrained(dtype=...)` silently and loads float32, which then fails at the
first bf16 input: the floor is what makes the keyword work)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import torch
from packaging.requirements import Requirement

from models.config import ModelConfig
from models.policy import load_pipeline

pytestmark = pytest.mark.unit
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


@pytest.mark.parametrize("req", _requirements(), ids=lambda r: r.name)
def test_installed_version_satisfies_the_floor(req):
    try:
        installed = version(req.name)
    except PackageNotFoundError:
        pytest.fail(f"{req.name} is a dependency in pyproject.toml but is not installed")
    assert req.specifier.contains(installed, prereleases=True), f"{req.name} {installed} does not satisfy {req}"


def test_every_floor_the_code_needs_is_declared():
    floors = {r.name.lower(): r.specifier for r in _requirements()}
    for name, needed in {"diffusers": "0.40", "deepspeed": "0.15", "transformers": "5"}.items():
        assert any(s.operator == ">=" and s.version == needed for s in floors[name]), f"{name} floor must be >={needed}"


@pytest.mark.component
def test_from_pretrained_honours_the_requested_dtype(tiny_sd3_path):
    pipe = load_pipeline(ModelConfig(path=tiny_sd3_path, dtype="bfloat16"))
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):
        dtypes = {p.dtype for p in getattr(pipe, name).parameters()}
        assert dtypes == {torch.bfloat16}, f"{name} loaded as {dtypes}"
