"""`lab.py data make|info`: output, reuse, and exit code 2 on bad input."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from xvol_lab.cli.main import main

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--set", "num_train=20", "--set", "num_val=10", "--set", "num_classes=4"]


def test_make_prints_the_folder_and_reuses_it(tmp_path, capsys):
    assert main(["data", "make", "shapes", "--root", str(tmp_path), *SMALL]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == tmp_path / "shapes" / "c4-s32-n20-v10-seed0"
    assert len(list(folder.rglob("*.png"))) == 30
    stamp = os.stat(folder / "manifest.json").st_mtime_ns
    assert main(["data", "make", "shapes", "--root", str(tmp_path), *SMALL]) == 0
    assert Path(capsys.readouterr().out.strip()) == folder
    assert os.stat(folder / "manifest.json").st_mtime_ns == stamp


def test_info_counts_per_split_and_class(tmp_path, capsys):
    args = ["shapes-context", "--root", str(tmp_path), *SMALL, "--set", "num_train=22"]
    assert main(["data", "make", *args]) == 0
    capsys.readouterr()
    assert main(["data", "info", *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"shapes-context at {tmp_path}/shapes-context/c4-s32-n22-v10-seed0: 4 classes"
    rows = [line.split() for line in lines[1:]]
    assert rows == [["class", "train", "val"], ["00-match", "6", "3"], ["01-offset1", "6", "3"],
                    ["02-offset2", "5", "2"], ["03-offset3", "5", "2"], ["total", "22", "10"]]


@pytest.mark.parametrize("argv, message", [
    (["make", "mnist"],
     "name: got 'mnist', expected one of 'shapes', 'shapes-context', 'shapes-side', "
     "'imagefolder', 'cifar10', 'shapes-seg', 'masks', 'shapes-coco', 'coco'"),
    (["make", "cifar10"], "data make: 'cifar10' is not generated; expected one of shapes, shapes-context, "
     "shapes-side, shapes-seg, shapes-coco"),
    (["make", "shapes", "--set", "num_train=abc"], "num_train: got 'abc', expected an integer"),
    (["make", "shapes", "--set", "num_classes=2", "--set", "num_train=1"], "num_train: got 1, expected an"),
    (["make", "shapes", "--set", "colour=red"], "colour: unknown key; expected one of name, root"),
    (["make", "shapes", "--set", "num_train"], "--set 'num_train': expected key=value"),
    (["info", "shapes"], "shapes: no dataset at "),
    (["info", "imagefolder"], "imagefolder: no folder "),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    argv = ["data", argv[0], argv[1], "--root", str(tmp_path / "empty"), *argv[2:]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"lab.py: error: {message}") and err.count("\n") == 1
    assert not (tmp_path / "empty").exists()  # nothing half-made


def test_data_without_action_shows_help(capsys):
    assert main(["data"]) == 2
    assert "make" in capsys.readouterr().out


def test_lab_py_exits_2_on_unknown_dataset(tmp_path):
    proc = subprocess.run([sys.executable, "lab.py", "data", "make", "nope", "--root", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["lab.py: error: name: got 'nope', expected one of 'shapes', "
                                        "'shapes-context', 'shapes-side', 'imagefolder', 'cifar10', "
                                        "'shapes-seg', 'masks', 'shapes-coco', 'coco'"]
    assert proc.stdout == ""
