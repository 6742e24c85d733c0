"""Three workers share one study in a real PostgreSQL server (env XVOL_TEST_POSTGRES_URL, else skipped)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from xvol_lab.study.config import load_study_config
from xvol_lab.study.ledger import counted
from xvol_lab.study.space import expand_space

URL = os.environ.get("XVOL_TEST_POSTGRES_URL")
REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.postgres,
              pytest.mark.skipif(not URL, reason="XVOL_TEST_POSTGRES_URL is not set (postgresql+psycopg://...)")]


def test_three_workers_share_a_postgres_study(tiny_study, lab_env, tmp_path: Path):
    name = f"pg_{uuid.uuid4().hex[:8]}"
    path = tiny_study(name, sampler={"name": "grid"}, budget={"epochs": 1}, pruner={"name": "median"},
                      space={"stages": {3: {"op": ["conv", "pssa", "xvol_pssa"]}}})
    command = [sys.executable, str(REPO / "lab.py"), "study", "run", str(path), "--storage", URL, "--runs",
               str(tmp_path / "runs"), "--no-live"]
    workers = [subprocess.Popen(command, cwd=tmp_path, env=lab_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    # 3 tiny trials take about a minute on 2 idle cores; a loaded CI machine needed 15 min once
    outputs = [w.communicate(timeout=1200) for w in workers]
    try:
        assert [w.returncode for w in workers] == [0, 0, 0], [o[1][-2000:] for o in outputs]
        trials = optuna.load_study(study_name=name, storage=URL).get_trials()
        _, config = load_study_config(path)
        grid = expand_space(config.space, config.base.model)
        finished = counted(trials)
        assert len(finished) == len(grid) == 3
        assert sorted(map(str, (t.params for t in finished))) == sorted(map(str, grid))
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in finished)
        assert all(sorted(t.intermediate_values) == [1] for t in finished)  # reported by the trial processes
        assert not (tmp_path / "runs" / name / "study.db").exists()
    finally:
        optuna.delete_study(study_name=name, storage=URL)
