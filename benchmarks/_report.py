"""Shared helpers for benchmarks: interleaved timing and section replacement in BENCHMARKS.md."""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from xvol_lab.atomic import write_text
from xvol_lab.markdown import markdown_table as frame_table

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def device_name(device: torch.device | str = "cpu") -> str:
    """Human-readable name of the device the figures were taken on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def sync(device: torch.device | str = "cpu") -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                     device: torch.device | str = "cpu") -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def saved_activation_mib(fn: Callable[[], object]) -> float:
    """MiB of the tensors autograd saves for backward during ``fn()`` (each storage counted once):
    the activation memory of training, exact and independent of the allocator."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values()) / 2**20


def write_section(title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the ``## title`` section of BENCHMARKS.md, leaving the other sections alone."""
    header = "# Benchmarks\n\nWritten by `benchmarks/*.py`; ratios are measured side by side in one run.\n"
    text = path.read_text() if path.exists() else header
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    write_text(path, text)  # atomic: a crash leaves the old file, never a half-written one


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured Markdown table of `rows` under `header` (`xvol_lab.markdown`)."""
    return frame_table(pd.DataFrame(rows, columns=header))
