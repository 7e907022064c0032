"""The run's storage path (common/storage.py): resolved once on the driver, checked on every learner."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.storage import StorageError, check_sentinel, remove_sentinel, resolve_output_dir, write_sentinel


def test_relative_paths_resolve_on_the_driver(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_output_dir("/data/runs/a") == "/data/runs/a"
    assert resolve_output_dir("~/runs/a") == str(tmp_path / "home" / "runs" / "a")
    assert resolve_output_dir("outputs/run", cwd=tmp_path / "repo") == str(tmp_path / "repo" / "outputs" / "run")
    # Under `ray job submit --working-dir` the driver runs in Ray's unpacked copy, which vanishes with
    # the job and differs per node: a relative path goes under ~/flowray_results instead.
    job_copy = tmp_path / "session_1" / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    assert resolve_output_dir("outputs/run", cwd=job_copy) == str(tmp_path / "home" / "flowray_results" / "outputs" / "run")
    with pytest.raises(StorageError, match=r"logging.output_dir='s3://bucket/run'.*mount"):
        resolve_output_dir("s3://bucket/run")


def test_a_node_that_does_not_see_the_storage_is_named(tmp_path):
    path, token = write_sentinel(str(tmp_path / "shared"))
    check_sentinel(path, token, "learner-0")  # the same filesystem: passes
    elsewhere = str(tmp_path / "node-local" / Path(path).relative_to(tmp_path / "shared"))
    with pytest.raises(StorageError, match=r"logging.output_dir is not shared storage: learner-1 on .* does not see"):
        check_sentinel(elsewhere, token, "learner-1")
    with pytest.raises(StorageError, match="not shared storage"):
        check_sentinel(path, "another run's token", "learner-1")
    remove_sentinel(path)
    assert not Path(path).parent.exists()
