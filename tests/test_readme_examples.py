"""Every command of the README's "Command line" and paper-protocol blocks, read from README.md (so
they cannot drift) and run as written plus toy sizes (--set / --trials appended), in order, in one
folder: each must succeed and leave what the next one reads."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from xvol_lab.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
TOY_MODEL = ["model.depths=[1,1,1,1]", "model.width_mult=0.125"]
TOY_DATA = ["data.num_train=20", "data.num_val=10", "data.batch_size=10", "data.num_workers=0"]
CLASSIFICATION_SIZE = ["data.image_size=16"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def bash_block(heading: str) -> list[list[str]]:
    """The commands of the first ```bash block under `heading`, comments dropped, as argv lists."""
    text = README.read_text()
    section = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", section, re.S)[1]
    lines = block.replace("\\\n", " ").splitlines()
    return [shlex.split(line, comments=True) for line in lines if line.strip()]


def toy(argv: list[str]) -> list[str]:
    """`argv` (after ``python lab.py``) with toy sizes appended."""
    command = argv[:2]
    text = " ".join(argv)
    dense = "task=" in text if command[0] == "train" else "det_" in text or "seg_" in text
    size = [] if dense else CLASSIFICATION_SIZE
    if command[0] == "train":
        sizes = [*TOY_DATA, *TOY_MODEL, "trainer.max_epochs=1", "trainer.accelerator=cpu"]
        return [*argv, "--no-progress", "--set", *sizes, *size]
    if command == ["study", "run"]:
        sizes = [f"base.{s}" for s in [*TOY_DATA, *TOY_MODEL]]
        return [*argv, "--trials", "1", "--no-live", "--set", *sizes, "budget.epochs=1", "budget.seeds=1"]
    if command == ["data", "make"]:
        return [*argv, "--set", "num_train=20", "num_val=10"]
    return argv


def latest(folder: Path, pattern: str) -> str:
    return str(sorted(folder.glob(pattern), key=lambda p: p.stat().st_mtime)[-1])


@pytest.mark.parametrize("heading", ["## Command line", "## The paper's protocol"])
def test_readme_commands_run_at_toy_size(heading, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    commands = bash_block(heading)
    assert commands and all(c[:2] == ["python", "lab.py"] for c in commands)
    for command in commands:
        argv = toy(command[2:])
        if any("<run>" in a for a in argv):  # the run folder the previous train command printed
            argv = [a.replace("runs/train/<run>", latest(tmp_path / "runs" / "train", "*")) for a in argv]
        if any("<n>" in a for a in argv):
            trial = Path(latest(tmp_path / "runs", "*/export/trial_*")).name
            argv = [a.replace("trial_<n>", trial) for a in argv]
        if "my_images/" in argv:
            images = tmp_path / "my_images"
            images.mkdir()
            for path in sorted((tmp_path / "data").rglob("*.png"))[:3]:
                shutil.copy(path, images / path.name)
        code = main(argv)
        out, err = capsys.readouterr()
        assert code == 0, f"{' '.join(argv)}\n{err[-2000:]}"
    if heading == "## Command line":
        assert (tmp_path / "predictions" / "predictions.csv").is_file()
    else:
        study = tmp_path / "runs" / commands[-1][-1]  # the study the protocol reports on
        assert (study / "report" / "report.md").is_file()
        logs = "".join(p.read_text() for p in study.rglob("trial.log"))
        assert "init from runs/stage_search/export/trial_" in logs
        assert "stages loaded: layer1, layer2" in logs  # the stem differs (imagenet vs small); layer1-2 match
