"""Argument types shared by the command modules."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"got {text!r}, expected an integer >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"got {value}, expected an integer >= 1")
    return value


def split_set_lists(argv: Sequence[str]) -> list[str]:
    """`argv` with each ``--set A=1 B=2`` list written as ``--set=A=1 --set=B=2``.

    A bare ``--set`` takes the next token, then every following token that holds a ``=`` and is
    not an option; the first token without ``=`` (a study NAME) ends the list, so ``--set`` may
    come before or after the positional arguments. Nothing after ``--`` is touched.
    """
    out: list[str] = []
    tokens = list(argv)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token == "--":
            out.extend(tokens[i - 1:])
            break
        if token != "--set" or i >= len(tokens) or tokens[i].startswith("-"):
            out.append(token)
            continue
        out.append(f"--set={tokens[i]}")
        i += 1
        while i < len(tokens) and "=" in tokens[i] and not tokens[i].startswith("-"):
            out.append(f"--set={tokens[i]}")
            i += 1
    return out
