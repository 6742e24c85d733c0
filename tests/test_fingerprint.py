"""The environment fingerprint: what `fit` records of a run (threads, kernel backend and build
failures, versions, git, device, precision), how a trial's seeds combine it, where a failed kernel
build is shown, and the report refusing to compare trials that ran differently (RESULTS.md:
tests/test_report_results.py; a real trial's stored fingerprint: tests/test_study_run.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _report_studies import CONV, PSSA_XSA, XPSSA2, add, metrics_of, open_study, write_study_file
from optuna.trial import FrozenTrial, TrialState, create_trial
from rich.console import Console

from xvol_lab.cli.main import main
from xvol_lab.errors import ConfigError
from xvol_lab.ops.kernels import backends
from xvol_lab.ops.registry import create_op
from xvol_lab.study.config import load_study_config
from xvol_lab.study.environment import build_failure_text, check_comparable, combine_fingerprints
from xvol_lab.study.ledger import tally
from xvol_lab.study.outcome import Outcome, combine
from xvol_lab.study.progress import LiveView, StudyState
from xvol_lab.study.summary import status
from xvol_lab.tasks.fingerprint import COMPARED, environment_fingerprint, git_state

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def fingerprint(**changes: object) -> dict:
    """A fingerprint as a trial of this machine stores it, with `changes`."""
    return {"threads": 1, "backend": "cpu", "kernel_build_failed": False, "kernel_build_error": None,
            "torch": "2.9.0", "lightning": "2.6.4", "optuna": "5.0.0", "xvol_lab": "0.1.0",
            "git_commit": "abc", "git_dirty": False, "device": "cpu: Xeon", "precision": "32-true", **changes}


def test_fingerprint_of_this_process_names_threads_versions_device_and_precision():
    fp = environment_fingerprint(torch.device("cpu"), "bf16-mixed")
    assert fp["threads"] == torch.get_num_threads() == 1
    assert fp["torch"] == torch.__version__ and fp["xvol_lab"] == "0.1.0"
    assert fp["lightning"] and fp["optuna"]  # installed: their versions, not None
    assert fp["device"].startswith("cpu: ") and fp["precision"] == "bf16-mixed"
    assert (fp["git_commit"], fp["git_dirty"]) == git_state()
    assert set(COMPARED) <= set(fp)
    json.dumps(fp)  # stored as JSON (fingerprint.json, a trial's user attr)


def test_git_state_tolerates_a_missing_git(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert git_state() == (None, None)


def test_a_failed_kernel_build_is_in_the_fingerprint_and_the_composite_path_runs(monkeypatch, caplog):
    def no_compiler(**kwargs: object) -> None:
        raise RuntimeError("Error building extension 'xvol_pssa_cpu'\nc++: not found")

    monkeypatch.setattr(backends, "_AVAILABLE", {})
    monkeypatch.setattr(backends, "_FAILED", {})
    monkeypatch.setattr(backends, "_RAN", set())
    monkeypatch.setattr("torch.utils.cpp_extension.load", no_compiler)
    op = create_op("pssa", 8, 8)
    op(torch.randn(1, 8, 6, 6))
    assert "PSSA C++ kernels unavailable" in caplog.text
    fp = environment_fingerprint(torch.device("cpu"), "32-true")
    assert (fp["backend"], fp["kernel_build_failed"]) == ("torch", True)
    assert fp["kernel_build_error"] == "cpu: RuntimeError: c++: not found"


def test_an_all_conv_network_runs_no_kernel_backend(monkeypatch):
    monkeypatch.setattr(backends, "_AVAILABLE", {})
    monkeypatch.setattr(backends, "_RAN", set())
    create_op("conv", 8, 8)(torch.randn(1, 8, 6, 6))
    assert environment_fingerprint(torch.device("cpu"), "32-true")["backend"] == "none"


def test_seeds_combine_into_one_fingerprint_that_shows_where_they_differ():
    same = combine_fingerprints([fingerprint(), fingerprint()])
    assert same == fingerprint()
    mixed = combine_fingerprints([fingerprint(), fingerprint(threads=2, kernel_build_failed=True)])
    assert mixed["threads"] == "1 / 2" and mixed["kernel_build_failed"] is True and mixed["backend"] == "cpu"
    runs = [(0, Outcome("complete", values=[0.5], attrs={"val/acc1": 0.5, "fingerprint": fingerprint()})),
            (1, Outcome("complete", values=[0.7], attrs={"val/acc1": 0.7, "fingerprint": fingerprint(threads=2)}))]
    attrs = combine(runs, 2).attrs
    assert attrs["fingerprint"]["threads"] == "1 / 2" and attrs["per_seed"] == {"val/acc1": [0.5, 0.7]}


@pytest.fixture
def mixed_threads(tmp_path) -> tuple[Path, Path]:
    """Study 'mix': all-conv and X-volution in stage 3, trials 0 and 2 on 1 thread, 1 and 3 on 2; trial 4
    (failed) had no fingerprint and does not count."""
    path = write_study_file(tmp_path, "mix")
    study = open_study(tmp_path / "runs", "mix", ["maximize"])
    for params, acc, threads in [(CONV, 0.50, 1), (XPSSA2, 0.70, 2), (CONV, 0.55, 1), (XPSSA2, 0.72, 2)]:
        add(study, params, [acc], attrs={**metrics_of(acc), "fingerprint": fingerprint(threads=threads)})
    add(study, PSSA_XSA, state=TrialState.FAIL, attrs={"fail_reason": "crashed: boom"})
    return path, tmp_path / "runs"


def test_report_refuses_trials_run_with_different_threads_naming_the_field(mixed_threads, tmp_path, capsys):
    path, runs = mixed_threads
    out = tmp_path / "report"
    assert main(["study", "report", str(path), "--runs", str(runs), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "fingerprint field `threads`" in err, err
    assert "1 in trials 0, 2; 2 in trials 1, 3" in err and "--allow-mixed" in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["mix.yaml", "runs"]


def test_allow_mixed_reports_them_and_marks_the_report(mixed_threads, tmp_path, capsys):
    path, runs = mixed_threads
    out = tmp_path / "report"
    assert main(["study", "report", str(path), "--runs", str(runs), "--out", str(out), "--allow-mixed"]) == 0
    report = (out / "report.md").read_text()
    assert "- **mixed environments (--allow-mixed)**: `threads`: 1 in trials 0, 2; 2 in trials 1, 3" in report
    assert "X-volution(PSSA, L=2) in stage 3" in report  # the ablation is there


def trials_with(*fingerprints: dict | None) -> list[FrozenTrial]:
    """Complete trials 0, 1, ... with these fingerprints (None: stored before fingerprints existed)."""
    trials = []
    for number, fp in enumerate(fingerprints):
        trial = create_trial(state=TrialState.COMPLETE, values=[0.5],
                             user_attrs={} if fp is None else {"fingerprint": fp})
        trial.number = number
        trials.append(trial)
    return trials


@pytest.mark.parametrize("key", COMPARED)
def test_every_compared_field_is_checked(key):
    trials = trials_with(fingerprint(**{key: "other"}), fingerprint(), fingerprint())
    with pytest.raises(ConfigError, match=f"fingerprint field `{key}`: other in trial 0; "):
        check_comparable("mix", trials, allow_mixed=False)


def test_a_trial_that_ran_no_kernel_compares_with_any_backend():
    # the all-conv baseline (backend "none") against PSSA networks that ran the C++ kernel
    assert check_comparable("ab", trials_with(fingerprint(backend="none"), fingerprint(), fingerprint()),
                            allow_mixed=False) == []
    with pytest.raises(ConfigError, match="`backend`: cpu in trial 1; triton in trial 2; "):
        check_comparable("ab", trials_with(fingerprint(backend="none"), fingerprint(), fingerprint(backend="triton")),
                         allow_mixed=False)


def test_git_is_recorded_not_compared_and_old_trials_read_as_not_recorded():
    assert check_comparable("mix", trials_with(fingerprint(git_commit="a", git_dirty=True),
                                               fingerprint(git_commit="b")), allow_mixed=False) == []
    assert check_comparable("old", trials_with(None, None), allow_mixed=False) == []  # nothing recorded
    with pytest.raises(ConfigError, match="`threads`: not recorded in trial 0; 1 in trials 1, 2 "):
        check_comparable("mix", trials_with(None, fingerprint(), fingerprint()), allow_mixed=False)


def test_a_failed_kernel_build_shows_in_status_and_the_live_panel(tmp_path):
    path = write_study_file(tmp_path, "kb")
    study = open_study(tmp_path / "runs", "kb", ["maximize"])
    add(study, CONV, [0.5], attrs={**metrics_of(0.5), "fingerprint": fingerprint()})
    add(study, XPSSA2, [0.6], attrs={**metrics_of(0.6), "fingerprint": fingerprint(
        backend="torch", kernel_build_failed=True, kernel_build_error="cpu: RuntimeError: no c++")})
    trials = study.get_trials()
    line = "kernel build failed in trial 1: the composite torch path ran"
    assert build_failure_text(trials).startswith(line)
    name, config = load_study_config(path)
    _, lines = status(name, config, f"sqlite:///{tmp_path / 'runs' / 'kb' / 'study.db'}")
    assert any(x.startswith(line) for x in lines), lines
    console = Console(record=True, width=200, force_terminal=False)
    view = LiveView(console)
    view.state(StudyState("kb", 2, tally(trials), "val/acc1 0.6 (trial 1)", None, build_failure_text(trials)))
    view.close()
    assert line in console.export_text()
