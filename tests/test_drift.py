"""benchmarks/drift.py: the summed step size at which a run's loss leaves its starting level."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from tests.script_loader import load_script

drift = load_script("benchmarks/drift.py")


def test_onset_is_the_first_window_above_the_threshold_and_its_summed_step():
    loss = np.array([6.0] * 30 + [9.0] * 20)
    steps = np.full(50, 1e-3)  # 2 optimizer steps of 5e-4 per iteration
    at, summed = drift.drift_onset(loss, steps, window=20, threshold=7.6)
    # the trailing 20-mean passes 7.6 once 11 of its 20 are at 9 (7.65): the window ending at iteration 40
    assert at == 40 and summed == pytest.approx(41e-3)
    assert drift.drift_onset(loss[:30], steps[:30], window=20, threshold=7.5) is None


def test_a_run_folder_reads_its_rate_from_the_metrics_or_else_its_config(tmp_path, capsys):
    rows = [{"policy/loss": 6.0, "learner/optimizer_steps": 2.0} for _ in range(25)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"learner": {"learning_rate": 5e-4}}))
    [row] = drift.main([str(tmp_path)])
    assert row["summed_step"] == pytest.approx(25 * 2 * 5e-4) and row["onset_iteration"] is None
    assert "| none |" in capsys.readouterr().out
