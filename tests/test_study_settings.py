"""A study keeps what `study run` was given (--set, --trials, --seeds) in its storage: a later run
continues with it, `status`, `list` and the report count the same budget, and a real mismatch is
refused with every differing key and the storage named as the user gave it."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from xvol_lab.cli.main import main
from xvol_lab.study import worker as worker_module
from xvol_lab.study.outcome import Outcome
from xvol_lab.study.report import load_study_data
from xvol_lab.study.results import regenerate_command
from xvol_lab.study.settings import CONFIG, SETTINGS, RunSettings
from xvol_lab.study.space import suggest_spec

optuna.logging.set_verbosity(optuna.logging.WARNING)

GIVEN = ["--set", "base.data.num_train=48", "base.optim.lr=0.05", "--trials", "3"]


class Seen(list):
    """(trial number, base.data.num_train, base.optim.lr) of each trial as the worker saw it;
    `stop_at`: the count of trials at which a Ctrl-C interrupts the study."""

    stop_at: int | None = None


@pytest.fixture
def trained(monkeypatch) -> Seen:
    """Trials 'train' at once (their architecture drawn, a made-up value), recorded in a `Seen`."""
    seen = Seen()

    def train(self, trial, role=None):
        suggest_spec(trial, self.config.space, self.config.base.model)
        seen.append((trial.number, self.config.base.data.num_train, self.config.base.optim.lr))
        if len(seen) == seen.stop_at:
            raise KeyboardInterrupt
        return Outcome("complete", None, [0.25 + 0.25 * trial.number], {"val/acc1": 0.25 + 0.25 * trial.number})

    monkeypatch.setattr(worker_module.Worker, "_train", train)
    return seen


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_later_run_continues_with_the_stored_settings(tiny_study, trained, tmp_path: Path, capsys):
    path = tiny_study(budget={"n_trials": 10, "epochs": 1})
    runs = tmp_path / "runs"
    # --set before NAME: the list of KEY=VALUE ends at NAME; Ctrl-C during the second trial
    trained.stop_at = 2
    code, out, err = run_main(capsys, "study", "run", *GIVEN, str(path), "--runs", str(runs), "--no-live")
    assert code == 130, err
    assert trained == [(0, 48, 0.05), (1, 48, 0.05)]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{runs / 'tiny' / 'study.db'}")
    assert study.user_attrs[SETTINGS] == {"set": ["base.data.num_train=48", "base.optim.lr=0.05"], "trials": 3,
                                          "seeds": None}
    stored = study.user_attrs[CONFIG]
    assert stored["base"]["data"]["num_train"] == 48 and stored["budget"]["n_trials"] == 3
    # the same command without --set and --trials continues with them, to 3/3 everywhere
    code, out, err = run_main(capsys, "study", "run", str(path), "--runs", str(runs), "--no-live")
    assert code == 0, err
    assert "tiny: 3/3 finished" in out
    assert [seen[1:] for seen in trained[2:]] == [(48, 0.05), (48, 0.05)]  # the handed-back trial, then one more
    code, out, err = run_main(capsys, "study", "run", str(path), "--runs", str(runs), "--no-live")
    assert code == 0, err
    assert "tiny: 3/3 finished" in out and len(trained) == 4  # nothing left to do
    code, out, err = run_main(capsys, "study", "status", str(path), "--runs", str(runs))
    assert code == 0, err
    assert "tiny: 3/3 finished" in out
    data = load_study_data(path, runs=runs)
    assert data.config.n_trials == 3 and data.config.base.data.num_train == 48
    code, out, err = run_main(capsys, "study", "report", str(path), "--runs", str(runs))
    assert code == 0, err
    assert "- trials: tiny: 3/3 finished" in Path(out.strip()).read_text()
    # a larger --trials continues the study (the budget is no part of what it was made from)
    code, out, err = run_main(capsys, "study", "run", str(path), "--runs", str(runs), "--no-live", "--trials", "4")
    assert code == 0, err
    assert "tiny: 4/4 finished" in out and len(trained) == 5 and trained[-1][1:] == (48, 0.05)


def test_a_different_set_is_refused_with_every_key_and_the_storage_as_given(tiny_study, trained, tmp_path: Path,
                                                                           capsys, monkeypatch):
    monkeypatch.delenv("XVOL_STORAGE", raising=False)
    path = tiny_study(budget={"n_trials": 10, "epochs": 1})
    runs = tmp_path / "runs"
    assert run_main(capsys, "study", "run", str(path), "--runs", str(runs), "--no-live", *GIVEN)[0] == 0
    before = files(runs)
    code, out, err = run_main(capsys, "study", "run", str(path), "--runs", str(runs), "--no-live",
                              "--set", "base.data.num_train=64", "base.optim.lr=0.1", "budget.epochs=2")
    assert code == 2 and out == ""
    assert err == (f"lab.py: error: --runs {runs}: study 'tiny' there was made with other settings "
                   "(base.data.num_train: stored 48, now 64; base.optim.lr: stored 0.05, now 0.1; budget.epochs: "
                   "stored 1, now 2); run it without --set to continue it (it keeps its stored --set "
                   "base.data.num_train=48 base.optim.lr=0.05 --trials 3), or start a fresh study with "
                   "another --runs\n")
    assert files(runs) == before and len(trained) == 3
    url = f"sqlite:///{(runs / 'tiny' / 'study.db').resolve()}"
    code, out, err = run_main(capsys, "study", "run", str(path), "--storage", url, "--no-live",
                              "--set", "base.model.stage3.op=sa")
    assert code == 2
    assert err.startswith(f"lab.py: error: --storage {url}: study 'tiny' there was made with other settings "
                          "(base.model.stage3.op: stored 'conv', now 'sa'); ")
    assert err.endswith("or start a fresh study with another --storage\n") and err.count("\n") == 1
    assert files(runs) == before


def test_print_config_and_set_after_name(tiny_study, tmp_path: Path, capsys):
    path = tiny_study()
    runs = tmp_path / "runs"
    code, out, err = run_main(capsys, "study", "run", str(path), "--runs", str(runs), "--set",
                              "budget.epochs=1", "base.model.stage4.op=sa", "--trials", "2", "--print-config")
    assert code == 0, err
    printed = yaml.safe_load(out)
    assert printed["budget"]["epochs"] == 1 and printed["budget"]["n_trials"] == 2
    assert printed["base"]["model"]["stages"][3]["op"] == "sa"
    assert not runs.exists()
    code, out, err = run_main(capsys, "study", "run", "--set", "base.model.stages.3.op=sa", str(path),
                              "--runs", str(runs), "--print-config")
    assert code == 2 and out == "" and not runs.exists()
    assert err == (f"lab.py: error: --set base.model.stages.3.op=sa: {path}: base.model.stages.3.op: stages are "
                   "numbered 1..4 as in the paper; write base.model.stage4.op\n")


def test_given_settings_replace_the_stored_ones_key_by_key():
    stored = RunSettings(("a.b=1", "c=2"), trials=3, seeds=2)
    merged = stored.then(RunSettings(("c=5", "d=1"), trials=None, seeds=3))
    assert merged == RunSettings(("a.b=1", "c=5", "d=1"), trials=3, seeds=3)
    assert merged.override_list() == ["a.b=1", "c=5", "d=1", "budget.n_trials=3", "budget.seeds=3"]
    assert merged.command_text() == "--set a.b=1 c=5 d=1 --trials 3 --seeds 3"
    assert regenerate_command("s", merged.command_text()).startswith(  # RESULTS.md reruns it with them
        "`python lab.py study run s --set a.b=1 c=5 d=1 --trials 3 --seeds 3 && python lab.py study report s")
    assert stored.then(RunSettings(("budget.n_trials=7",))) == RunSettings(("a.b=1", "c=2", "budget.n_trials=7"),
                                                                          trials=None, seeds=2)
