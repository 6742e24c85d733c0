"""Seed sharing (`xvol_lab.study.seed_share`): a seed's claim is an flock that lasts as long as its
holder and the trial process it was passed to, SIGKILL included; a shared trial's seeds are offered
to this machine's workers, last first, and withdrawn when it ends; two workers on one configuration
train each seed once, exactly as one worker does; the owner continues a seed whose helper stopped
without a result."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _study_processes import run_command
from optuna.trial import FixedTrial

from xvol_lab.models import BackboneSpec
from xvol_lab.schema import to_dict
from xvol_lab.study.config import StudyConfig, load_study_config
from xvol_lab.study.outcome import TrialRequest
from xvol_lab.study.progress import LogView
from xvol_lab.study.seed_share import CLAIM, SHARE, claimed, offered, shared
from xvol_lab.study.seeds import SeedRunner, prepare_run_dir
from xvol_lab.study.space import expand_space, suggest_spec

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import sys, time
from pathlib import Path
from xvol_lab.study.seed_share import claimed
with claimed(Path(sys.argv[1])) as claim:
    print("held" if claim is not None else "refused", flush=True)
    end = time.monotonic() + 300
    while not Path(sys.argv[2]).exists() and time.monotonic() < end:
        time.sleep(0.1)
"""


def holder(run_dir: Path, until: Path) -> subprocess.Popen[str]:
    """A process that claims `run_dir` and holds the claim until `until` exists (at most 5 min), once it
    printed "held"."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(until)], stdout=subprocess.PIPE,
                            text=True, env={"PYTHONPATH": str(REPO)})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_claim_excludes_every_other_until_its_block_ends(tmp_path):
    run_dir = tmp_path / "trial_0" / "seed_1"
    with claimed(run_dir) as first:
        with claimed(run_dir) as second:
            assert first is not None and second is None
    with claimed(run_dir) as again:
        assert again is not None
    assert (run_dir / CLAIM).is_file()  # kept: a new file would be a second lock


def test_a_killed_holder_releases_its_claim_and_a_trial_process_keeps_it(tmp_path):
    run_dir = tmp_path / "seed_0"
    proc = holder(run_dir, tmp_path / "never")
    with claimed(run_dir) as claim:
        assert claim is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with claimed(run_dir) as claim:
        assert claim is not None
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"], pass_fds=(claim,))
    with claimed(run_dir) as claim:
        assert claim is None  # the trial process still holds it after its starter let go
    child.wait()
    with claimed(run_dir) as claim:
        assert claim is not None


def grid_spec(config: StudyConfig, index: int) -> BackboneSpec:
    point = expand_space(config.space, config.base.model)[index]
    return suggest_spec(FixedTrial(point), config.space, config.base.model)


def request(number: int, seed: int) -> TrialRequest:
    _, config = load_study_config(REPO / "studies" / "op_ablation.yaml")
    return TrialRequest(study="s", trial_number=number, config=config.run_config(grid_spec(config, 0), seed, None),
                        objectives=("val/acc1",), pruner=config.pruner, report=None, step_offset=0, steps=4)


def test_a_shared_trial_offers_its_seeds_last_first_to_this_machine_until_it_ends(tmp_path, monkeypatch):
    folder = tmp_path / "study"
    trial_dir = folder / "trial_2"
    trial_dir.mkdir(parents=True)
    other = folder / "trial_3"
    other.mkdir()
    (other / SHARE).write_text(json.dumps({"host": "another-node", "seeds": {"seed_0": to_dict(request(3, 0))}}))
    with shared(trial_dir, {}):
        assert not (trial_dir / SHARE).exists()  # nothing to offer: no file
    requests = {f"seed_{s}": request(2, s) for s in (0, 1, 2)}
    with shared(trial_dir, requests):
        found = list(offered(folder))
        assert [(p, r.config.seed) for p, r in found] == [(trial_dir / "seed_2", 2), (trial_dir / "seed_1", 1),
                                                          (trial_dir / "seed_0", 0)]
        assert found[0][1] == requests["seed_2"]
    assert not (trial_dir / SHARE).exists() and list(offered(folder)) == []


def test_a_new_start_keeps_the_claim_file_of_the_seed(tmp_path):
    run_dir = tmp_path / "seed_0"
    with claimed(run_dir) as claim:
        assert claim is not None
        (run_dir / "metrics.csv").write_text("epoch\n")
        assert prepare_run_dir(run_dir, 0) is None
        assert sorted(p.name for p in run_dir.iterdir()) == [CLAIM]
        with claimed(run_dir) as second:
            assert second is None  # the same file, still locked


def shared_study(tiny_study, name: str, seeds: int) -> Path:
    return tiny_study(name, sampler={"name": "grid"}, budget={"epochs": 1, "seeds": seeds},
                      base={"seed": 3, "trainer": {"threads": 1}}, space={"stages": {3: {"op": ["conv"]}}})


def per_seed_metrics(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text())["metrics"] for p in folder.glob("trial_*/seed_*/result.json")}


@pytest.mark.slow
def test_two_workers_on_one_configuration_train_each_seed_once_as_one_worker_does(tiny_study, lab_env, tmp_path):
    path = shared_study(tiny_study, "one", 4)
    runs = {k: tmp_path / f"runs_{k}" for k in (1, 2)}
    done = {k: subprocess.run([*run_command(path, runs[k]), "--workers", str(k)], cwd=tmp_path, env=lab_env,
                              capture_output=True, text=True, timeout=600) for k in (1, 2)}
    assert all(d.returncode == 0 for d in done.values()), done[2].stderr[-3000:]
    helped = re.findall(r"trial 0 started .* seed (\d+) \(helping\)", done[2].stderr)
    assert helped and "3" not in helped  # the owner starts at the first seed, the helper at the last
    for k in (1, 2):
        logs = sorted((runs[k] / "one").glob("trial_0/seed_*/trial.log"))
        assert [p.parent.name for p in logs] == ["seed_3", "seed_4", "seed_5", "seed_6"]
        assert all(len(re.findall(r"trial 0 complete", p.read_text())) == 1 for p in logs)  # once each
        assert not (runs[k] / "one" / "trial_0" / SHARE).exists()
    assert per_seed_metrics(runs[2] / "one") == per_seed_metrics(runs[1] / "one")  # as one worker


@pytest.mark.slow
def test_the_owner_trains_a_seed_whose_helper_stopped_without_a_result(tiny_study, tmp_path, caplog):
    name, config = load_study_config(shared_study(tiny_study, "owner", 2))
    spec = grid_spec(config, 0)
    trial_dir = tmp_path / "runs" / name / "trial_0"
    # a helper of seed 3 that stops without a result once the owner has trained seed 4
    helper = holder(trial_dir / "seed_3", trial_dir / "seed_4" / "result.json")
    runner = SeedRunner(name, config, "sqlite:///unused.db", LogView(), poll=0.2)
    with caplog.at_level(logging.INFO, logger="xvol_lab.study.seeds"):
        outcome = runner.run(0, spec, trial_dir)
    assert helper.wait() == 0
    assert outcome.state == "complete" and outcome.attrs["seeds"] == [3, 4]
    assert "trial 0: seed 3 is trained by another worker" in caplog.messages
    results = [trial_dir / f"seed_{s}" / "result.json" for s in (3, 4)]
    assert results[0].stat().st_mtime > results[1].stat().st_mtime  # seed 3 trained after seed 4
    assert not (trial_dir / SHARE).exists()
