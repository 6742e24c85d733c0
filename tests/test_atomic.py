"""Files the lab writes honour the umask (0644/0755 under 022, 0640/0750 under 027) and are written
atomically: a run folder, its checkpoints, a deploy export, the study's JSON files and a generated
dataset, all made by the real code paths."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch
from fsspec.implementations.local import get_umask

from xvol_lab.atomic import atomic_path, current_umask, temp_dir, write_text
from xvol_lab.study.files import write_json
from xvol_lab.tasks import export_deploy, fit
from xvol_lab.tasks.config import load_run_config


@pytest.fixture
def umask():
    """``umask(mask)`` sets the process umask for the test; the old one is restored after it.

    fsspec (Lightning's checkpoint writer) reads the umask once per process; a real process never
    changes it, this test does, so the cached value is dropped."""
    old = os.umask(0o022)
    os.umask(old)

    def set_umask(mask: int) -> None:
        os.umask(mask)
        get_umask.cache_clear()
    yield set_umask
    set_umask(old)


def modes_under(root: Path) -> dict[str, int]:
    """Permission bits of every file and folder below `root` (not `root`), by relative path."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in root.rglob("*")}


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)],
                         ids=["umask022", "umask027"])
def test_run_checkpoints_deploy_and_dataset_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    torch.set_num_threads(1)
    umask(mask)
    assert current_umask() == mask
    config = load_run_config(None, [
        f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.num_classes=4", "data.num_train=32",
        "data.num_val=16", "data.batch_size=16", "data.num_workers=0", "model.width_mult=0.125",
        "model.depths=[1,1,1,1]", "trainer.accelerator=cpu", "trainer.max_epochs=1",
        "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"])
    fit(config, tmp_path / "run", progress=False)
    export_deploy(tmp_path / "run" / "checkpoints" / "last.ckpt", tmp_path / "deploy" / "model.pt")
    write_json(tmp_path / "run" / "result.json", {"state": "complete"})

    modes = modes_under(tmp_path)
    for must in ("run/config.yaml", "run/spec.json", "run/results.json", "run/result.json", "run/metrics.csv",
                 "run/checkpoints/last.ckpt", "run/checkpoints/best.ckpt", "deploy/model.pt"):
        assert modes[must] == file_mode, must
    datasets = [p for p in (tmp_path / "data").iterdir() if p.is_dir()]
    assert len(datasets) == 1 and modes[str(datasets[0].relative_to(tmp_path))] == dir_mode
    assert any(name.endswith(".png") for name in modes)
    wrong = {name: oct(mode) for name, mode in modes.items()
             if mode != (dir_mode if (tmp_path / name).is_dir() else file_mode)}
    assert wrong == {}
    assert not [name for name in modes if name.endswith(".tmp") or ".tmp-" in name]  # no leftovers


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "result.json"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_temp_dir_gets_the_folder_mode_of_the_umask(tmp_path, umask):
    umask(0o027)
    made = temp_dir(tmp_path / "dataset")
    assert made.parent == tmp_path and made.name.startswith(".dataset.tmp-")
    assert stat.S_IMODE(made.stat().st_mode) == 0o750
