"""scripts/device_check.sh and scripts/device_check.py, the GPU check, on what a CPU can run: the shell
script parses and fails clearly without the model builder; the Python driver runs one iteration of the
SD3.5 preset structure (on the tiny model) and reports each actor's peak memory and the ratio metrics."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.script_loader import load_script

REPO = Path(__file__).resolve().parents[1]


def test_device_check_sh_parses_and_names_a_missing_builder(tmp_path):
    subprocess.run(["bash", "-n", str(REPO / "scripts" / "device_check.sh")], check=True)
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO / "scripts" / "device_check.sh", tmp_path / "scripts")
    proc = subprocess.run(["bash", str(tmp_path / "scripts" / "device_check.sh"), str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "scripts/build_real_width.py is missing" in proc.stderr


@pytest.mark.system
def test_device_check_py_reports_memory_and_ratios_on_cpu(tiny_sd3_path, tmp_path, capsys):
    device_check = load_script("scripts/device_check.py")
    out = tmp_path / "run"
    argv = ["--config", str(REPO / "configs" / "sd35_pickscore.yaml"), "--model-path", tiny_sd3_path,
            "--output-dir", str(out), "model.resolution=32", "sampling.num_steps=3", "sampling.eval_num_steps=3",
            "model.lora.rank=4", "model.lora.alpha=8", "cluster.torch_threads_per_actor=1"]
    assert device_check.main(argv) == 0
    report = json.loads((out / "device_check.json").read_text())
    assert set(report["peak_memory_gb"]) == {"learner-0", "rollout-0"}
    assert all(m["host_peak_rss_gb"] > 0.1 for m in report["peak_memory_gb"].values())
    assert abs(report["ratio"]["policy/ratio_mean"] - 1.0) < 1e-3  # the first update is on-policy
    assert "[device_check]" in capsys.readouterr().out
    assert (out / "checkpoints" / "iter_000001" / "trainable.safetensors").is_file()
