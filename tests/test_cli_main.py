"""The `lab.py` entry point: every command group is there, and bad input is one line with exit code 2."""

from __future__ import annotations

import pytest

from xvol_lab.cli.bench import available
from xvol_lab.cli.main import COMMANDS, build_parser, main


def test_every_command_group_is_registered():
    parser = build_parser()
    groups = next(a for a in parser._actions if a.dest == "command").choices
    assert list(groups) == list(COMMANDS)


def test_unknown_benchmark_is_one_line_exit_2(capsys):
    assert main(["bench", "nope"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "bench 'nope'" in err[0] and ", ".join(available()) in err[0]
    assert {"ops", "train", "detection"} <= set(available())


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "usage: lab.py" in capsys.readouterr().out


def test_argparse_errors_exit_2():
    with pytest.raises(SystemExit) as err:
        main(["study", "run"])  # NAME missing
    assert err.value.code == 2
