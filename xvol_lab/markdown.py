"""Table cells and GitHub pipe tables from pandas DataFrames: one helper for the reports, the
model cards, RESULTS.md and the benchmarks' BENCHMARKS.md."""

from __future__ import annotations

import math

import pandas as pd


def format_number(value: object) -> str:
    """A table cell: '' for NaN/None, integers without decimals, else 4 significant digits (1 decimal
    from 100 up)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.4g}"
    return str(value)


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub pipe table of `table` (cells formatted by `format_number`, pipes escaped)."""
    def cell(value: object) -> str:
        return format_number(value).replace("|", "\\|").replace("\n", " ")

    numeric = [pd.api.types.is_numeric_dtype(table[c]) for c in table.columns]
    lines = ["| " + " | ".join(cell(c) for c in table.columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"

