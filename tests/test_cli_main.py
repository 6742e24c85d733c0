"""The `lab.py` entry point, driven through `main([...])`: the help lists every command, each command
has its own help, bad input is one line with exit code 2, a command's exit code passes through and
Ctrl-C is exit code 130."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import import_module

import pytest

from xvol_lab.cli import bench
from xvol_lab.cli.args import split_set_lists
from xvol_lab.cli.main import build_parser, main
from xvol_lab.paths import REPO_ROOT

# The command groups README.md documents, in --help order, with the start of each one's help line.
COMMANDS = {"train": "train one model", "study": "architecture searches", "predict": "run an exported model",
            "data": "make synthetic datasets", "bench": "run a benchmark"}


def exit_code(argv: list[str]) -> int:
    """The exit code of `main(argv)`, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as err:
        return err.code


def listed_commands(help_text: str) -> dict[str, str]:
    """command -> help line, as the top-level help lists them."""
    return dict(re.findall(r"^    (\w+)\s{2,}(.+)$", help_text, flags=re.M))


def test_help_lists_every_command_in_order(capsys):
    assert exit_code(["--help"]) == 0
    listed = listed_commands(capsys.readouterr().out)
    assert list(listed) == list(COMMANDS)
    assert all(listed[name].startswith(start) for name, start in COMMANDS.items()), listed


def test_top_level_help_is_the_full_parsers_without_importing_the_commands():
    lines = {name: listed_commands(build_parser(full=()).format_help())[name] for name in COMMANDS}
    assert lines == listed_commands(build_parser().format_help())  # each module's own help line
    code = ("import sys\nfrom xvol_lab.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n"
            "    pass\nprint(sorted(m for m in ('torch', 'lightning', 'optuna') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert run.stdout.splitlines()[-1] == "[]"


def test_console_script_and_python_m_give_lab_py_help():
    def help_of(argv: list[str]) -> str:
        return subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout

    lab = help_of([sys.executable, "lab.py", "--help"])
    assert lab.startswith("usage: lab.py ") and "train one model" in lab
    assert help_of([sys.executable, "-m", "xvol_lab", "--help"]) == lab
    target = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]["xvol-lab"]
    module, function = target.split(":")  # what the installed `xvol-lab` script runs
    script = f"import sys; from {module} import {function}; sys.exit({function}())"
    assert help_of([sys.executable, "-c", script, "--help"]) == lab
    assert getattr(import_module(module), function) is main


@pytest.mark.parametrize("command", list(COMMANDS))
def test_each_command_has_its_own_help(command, capsys):
    assert exit_code([command, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: lab.py {command} ")


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert list(listed_commands(capsys.readouterr().out)) == list(COMMANDS)


@pytest.mark.parametrize("argv, message", [
    (["nope"], "argument COMMAND: invalid choice: 'nope'"),
    (["study", "run"], "the following arguments are required: NAME"),
    (["predict", "export", "images", "--batch-size", "0"],
     "argument --batch-size: got 0, expected an integer >= 1"),
    (["predict", "export", "images", "--top-k", "x"], "argument --top-k: got 'x', expected an integer >= 1"),
])
def test_argument_errors_exit_2_with_the_reason_last(argv, message, capsys):
    assert exit_code(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("usage: lab.py") and message in err[-1]


@pytest.mark.parametrize("argv, message", [
    (["bench", "nope"], "lab.py: error: bench 'nope': no "),
    (["data", "make", "cifar10"],
     "lab.py: error: data make: 'cifar10' is not generated; expected one of shapes"),
    (["data", "make", "shapes", "--set", "image_size=4"],
     "lab.py: error: image_size: got 4, expected an integer >= 8"),
])
def test_config_errors_are_one_line_exit_2_and_write_nothing(argv, message, capsys, tmp_path):
    assert main([*argv, "--root", str(tmp_path)] if argv[0] == "data" else argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(message), err
    assert list(tmp_path.iterdir()) == []


def test_unknown_benchmark_names_the_available_ones(capsys):
    assert main(["bench", "nope"]) == 2
    assert {"ops", "train", "detection"} <= set(bench.available())
    assert capsys.readouterr().err.rstrip().endswith(f"expected one of {', '.join(bench.available())}")


def test_a_commands_exit_code_passes_through_and_ctrl_c_is_130(monkeypatch, capsys):
    calls = []

    def finished(argv: list[str]) -> int:
        calls.append(argv[1:])
        return 3

    monkeypatch.setattr(bench.subprocess, "call", finished)
    assert main(["bench", "ops", "--quick"]) == 3
    assert calls == [[str(bench.BENCHMARKS_DIR / "ops.py"), "--quick"]]

    def interrupted(argv: list[str]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(bench.subprocess, "call", interrupted)
    assert main(["bench", "ops"]) == 130
    assert capsys.readouterr().err == "lab.py: interrupted\n"


@pytest.mark.parametrize("argv, expected", [
    (["study", "run", "--set", "a=1", "b.c=2", "NAME", "--trials", "3"],
     ["study", "run", "--set=a=1", "--set=b.c=2", "NAME", "--trials", "3"]),
    (["study", "run", "NAME", "--set", "a=1", "--set", "b=x=y"], ["study", "run", "NAME", "--set=a=1", "--set=b=x=y"]),
    (["train", "--set", "nothing", "x=1"], ["train", "--set=nothing", "--set=x=1"]),  # refused later: key=value
    (["train", "--set", "--no-progress"], ["train", "--set", "--no-progress"]),  # argparse: expected one argument
    (["train", "--set=a=1", "b=2"], ["train", "--set=a=1", "b=2"]),
    (["x", "--", "--set", "a=1"], ["x", "--", "--set", "a=1"]),
])
def test_set_lists_end_at_the_first_word_without_an_equals_sign(argv, expected):
    assert split_set_lists(argv) == expected
