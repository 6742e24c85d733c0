"""Where an interrupted seed continues: its last checkpoint, or, when that one does not load (cut
short by a kill mid-write or a full disk), the earlier best.ckpt, or the start; the log says which."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from xvol_lab.study.seeds import loads, prepare_run_dir


def checkpoints(run_dir: Path, *, best: bool) -> Path:
    folder = run_dir / "checkpoints"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.arange(1000.0)}, "epoch": 3}, folder / "last.ckpt")
    if best:
        torch.save({"state_dict": {"w": torch.zeros(1000)}, "epoch": 1}, folder / "best.ckpt")
    (run_dir / "trial.log").write_text("attempt 1\n")
    (run_dir / "metrics.csv").write_text("epoch\n0\n")
    return folder


def cut_short(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_whole_last_checkpoint_is_continued(tmp_path):
    folder = checkpoints(tmp_path / "seed_0", best=True)
    assert loads(folder / "last.ckpt") and prepare_run_dir(tmp_path / "seed_0", 4) == "last"


def test_a_last_checkpoint_cut_short_falls_back_to_best(tmp_path, caplog):
    """It crashed the retry ("PytorchStreamReader failed ..."), not retried: the grid point was lost."""
    run_dir = tmp_path / "seed_0"
    folder = checkpoints(run_dir, best=True)
    cut_short(folder / "last.ckpt")
    assert not loads(folder / "last.ckpt")
    with caplog.at_level(logging.WARNING, logger="xvol_lab.study.seeds"):
        assert prepare_run_dir(run_dir, 4) == str((folder / "best.ckpt").resolve())
    assert torch.load(folder / "best.ckpt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["best.ckpt", "last.ckpt.unreadable"]
    assert caplog.messages == ["trial 4: seed_0: last.ckpt does not load (cut short?); continues from "
                               "best.ckpt, an earlier epoch (the bad file is kept as last.ckpt.unreadable)"]


def test_with_no_checkpoint_that_loads_the_seed_starts_over(tmp_path, caplog):
    run_dir = tmp_path / "seed_0"
    cut_short(checkpoints(run_dir, best=False) / "last.ckpt")
    with caplog.at_level(logging.WARNING, logger="xvol_lab.study.seeds"):
        assert prepare_run_dir(run_dir, 4) is None
    assert sorted(p.name for p in run_dir.iterdir()) == ["trial.log"]  # emptied but for the log
    assert caplog.messages == ["trial 4: seed_0: last.ckpt does not load (cut short?) and no earlier "
                               "checkpoint does; the seed starts over"]
