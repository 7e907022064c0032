"""Test-session defaults: nothing downloads, Ray token auth is off, DeepSpeed JIT builds go to a
per-session folder (a killed build elsewhere cannot leave a lock that hangs us), and one tiny random
SD3 pipeline saved once per session for the component and system tiers."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", tempfile.mkdtemp(prefix="flowray-torch-ext-"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_sd3_path(tmp_path_factory) -> str:
    """A tiny random SD3 pipeline (real diffusers classes) saved to a folder, as from_pretrained expects."""
    from tests.tiny_models import tiny_sd3_pipeline

    folder = tmp_path_factory.mktemp("tiny-sd3")
    tiny_sd3_pipeline().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def real_width(tmp_path_factory):
    """family ("sd35" or "flux") -> its real-width reduced-depth pipeline folder
    (scripts/build_real_width.py), built on first use (a minute or two on 2 cores)."""
    from tests.script_loader import load_script

    build, out, folders = load_script("scripts/build_real_width.py").build, tmp_path_factory.mktemp("real-width"), {}
    return lambda family: folders.setdefault(family, str(build(out, family)))


@pytest.fixture(scope="module")
def local_ray():
    """A private local Ray for one test module (never attaches to a running cluster); 8 logical CPUs so
    the actors of a small system test fit on a 2-core machine."""
    import ray

    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
