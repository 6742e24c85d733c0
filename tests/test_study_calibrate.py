"""`lab.py study calibrate` and `lab.py study power`: the baseline alone over seeds and budgets (a
toy study that trains in seconds), the two-cluster check, and bad input (one line, exit 2, nothing
written)."""

from __future__ import annotations

import json
import math
import statistics

import pytest

from xvol_lab.cli.main import main
from xvol_lab.study import calibrate as cal
from xvol_lab.study.config import load_study_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_two_clusters_finds_a_bimodal_outcome_and_nothing_in_a_unimodal_one():
    assert cal.two_clusters([0.50, 0.51, 0.49, 0.98, 0.99, 1.00]) == "yes: 3 runs near 0.5, 3 near 0.99"
    assert cal.two_clusters([0.60, 0.62, 0.64, 0.66, 0.68, 0.70]) == "no"
    assert cal.two_clusters([0.50, 0.51, 0.99]) == "too few runs"
    # a lone outlier is not a cluster: each side keeps at least 2 runs
    assert cal.two_clusters([0.60, 0.61, 0.62, 0.63, 0.99]) == "no"


def test_calibration_row_places_the_baseline_in_the_metric_range():
    row = cal.calibration_row(3, [0.6, 0.7, 0.8], [10.0, 12.0, 14.0], floor=0.5, bounds=(0.0, 1.0))
    assert row["mean"] == pytest.approx(0.7) and row["sd"] == pytest.approx(0.1)
    assert (row["min"], row["max"]) == (0.6, 0.8)
    assert row["position"] == pytest.approx(0.7) and row["above floor"] == pytest.approx(0.2)
    assert row["below ceiling"] == pytest.approx(0.3) and row["wall (s)"] == pytest.approx(12.0)
    unbounded = cal.calibration_row(1, [0.2, 0.4], [1.0, 1.0], floor=0.0, bounds=(0.0, math.inf))
    assert math.isnan(unbounded["position"])  # a loss has no ceiling to be placed under


@pytest.mark.slow
def test_calibrate_runs_the_baseline_over_seeds_and_budgets_and_resumes(tiny_study, tmp_path, capsys,
                                                                       monkeypatch):
    path = tiny_study("cal", sampler={"name": "grid"}, budget={"epochs": 1, "seeds": 2})
    runs = tmp_path / "runs"
    assert main(["study", "calibrate", str(path), "--budgets", "1", "2", "--runs", str(runs)]) == 0
    out = capsys.readouterr().out
    folder = runs / "cal" / "calibrate"
    records = {(e, s): json.loads((folder / f"epochs_{e}" / f"seed_{s}" / cal.RECORD).read_text())
               for e in (1, 2) for s in (0, 1)}
    table = (folder / "calibration.csv").read_text().splitlines()
    assert table[0].split(",")[:4] == ["epochs", "n", "mean", "sd"]
    for line, epochs in zip(table[1:], (1, 2), strict=True):
        cells = line.split(",")
        values = [records[(epochs, s)]["value"] for s in (0, 1)]
        assert int(cells[0]) == epochs and int(cells[1]) == 2
        assert float(cells[2]) == pytest.approx(statistics.fmean(values))
        assert float(cells[6]) == pytest.approx(4 / 32)  # floor: 10 balanced classes, 32 val images
    assert "Calibration of `cal`" in out and (folder / "calibration.md").is_file()
    _, config = load_study_config(path)
    assert config.baseline_spec is not None and all(s.op == "conv" for s in config.baseline_spec.stages)
    monkeypatch.setattr(cal, "fit", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert main(["study", "calibrate", str(path), "--budgets", "1", "2", "--runs", str(runs)]) == 0


def test_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_study, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["study", "calibrate", "no_such_study", "--runs", str(runs)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lab.py: error: study 'no_such_study': no ")
    path = tiny_study("pw", sampler={"name": "grid"})
    assert main(["study", "power", str(path), "--effect", "-0.1", "--runs", str(runs)]) == 2
    assert capsys.readouterr().err == ("lab.py: error: --effect: got -0.1, expected a positive difference in "
                                       "val/acc1's units\n")
    bad = tiny_study("seeds", budget={"epochs": 1, "seeds": {"min": 5, "max": 3}})
    assert main(["study", "run", str(bad), "--runs", str(runs)]) == 2
    assert capsys.readouterr().err == f"lab.py: error: {bad}: budget.seeds.min: got 5, expected at most max (3)\n"
    assert not runs.exists()


def test_runs_of_one_thread_train_side_by_side_with_the_numbers_of_one_at_a_time(tiny_study, tmp_path, caplog,
                                                                                 monkeypatch):
    """With base.trainer.threads: 1 on 2 cores or more, the runs still to train are spread over
    processes (as a study's trials are); each trains on 1 thread either way, so every value is the
    one a run alone gives."""
    path = tiny_study("side", sampler={"name": "grid"}, base={"trainer": {"threads": 1}},
                      budget={"epochs": 1, "seeds": 2})
    _, config = load_study_config(path)
    packed = cal.local_workers(config.base.trainer)
    with caplog.at_level("INFO", logger="xvol_lab.study.calibrate"):
        side = cal.calibrate("side", config, runs=tmp_path / "packed", seeds=2, budgets=[1, 2])
    assert (f"calibrate: 4 runs to train, {min(4, packed)} at once" in caplog.messages) == (packed > 1)
    monkeypatch.setattr(cal, "local_workers", lambda trainer: 1)
    alone = cal.calibrate("side", config, runs=tmp_path / "alone", seeds=2, budgets=[1, 2])
    assert side["mean"].tolist() == alone["mean"].tolist() and side["sd"].tolist() == alone["sd"].tolist()
    for epochs in (1, 2):
        for seed in (0, 1):
            run = f"epochs_{epochs}/seed_{seed}/{cal.RECORD}"
            assert (json.loads((tmp_path / "packed/side/calibrate" / run).read_text())["value"]
                    == json.loads((tmp_path / "alone/side/calibrate" / run).read_text())["value"])


def test_a_budget_the_study_would_not_validate_at_its_end_is_validated_after_its_last_epoch(tiny_study):
    # the study validates after its last epoch alone (every 2 epochs of 2): a budget of 3 epochs would
    # otherwise never validate its last epoch, and a budget of 4 keeps the study's every-2 schedule
    path = tiny_study("cal", sampler={"name": "grid"}, budget={"epochs": 2, "seeds": 2},
                      base={"trainer": {"check_val_every_n_epoch": 2}})
    _, config = load_study_config(path)
    every = {e: cal._calibration_run(config, 0, e).trainer for e in (1, 2, 3, 4)}
    assert {e: (t.max_epochs, t.check_val_every_n_epoch) for e, t in every.items()} == {
        1: (1, 1), 2: (2, 2), 3: (3, 3), 4: (4, 2)}
