"""Shared helpers for benchmarks: interleaved timing and section replacement in BENCHMARKS.md."""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from xvol_lab.allocator import describe as describe_malloc
from xvol_lab.atomic import write_text
from xvol_lab.markdown import markdown_table as frame_table

BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def _cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the machine type."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M)
        if found:
            return found.group(1).strip()
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str = "cpu") -> str:
    """Human-readable name of the device the figures were taken on."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {_cpu_model()} ({os.cpu_count()} cores), {torch.get_num_threads()} threads, {describe_malloc()}"


def sync(device: torch.device | str = "cpu") -> None:
    """Wait for the work queued on `device` (that device, not the current one)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cpu_clock(device: torch.device | str) -> Callable[[], float]:
    """Wall time on CUDA; on CPU this process's CPU time, which other processes on a shared machine
    cannot inflate (with one intra-op thread it is the work done)."""
    return time.perf_counter if torch.device(device).type == "cuda" else time.process_time


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                     device: torch.device | str = "cpu",
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median seconds per call of each function, measured round-robin so machine noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = clock()
            fn()
            sync(device)
            samples[name].append(clock() - start)
    return {k: statistics.median(v) for k, v in samples.items()}


def cuda_peak_mib(fn: Callable[[], object], device: torch.device | str) -> float:
    """Peak CUDA memory allocated on `device` during ``fn()``, above what was allocated before (MiB)."""
    device = torch.device(device)
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


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


def smoke_args(doc: str, quick: str) -> argparse.Namespace:
    """The command line of a benchmark with only ``--quick`` (what `quick` says it does) and
    ``--no-write`` (print, leave BENCHMARKS.md alone); the description is `doc`'s first line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    return parser.parse_args()


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


def publish(title: str, body: str, write: bool = True) -> None:
    """Print a benchmark's section and (unless `write` is False: ``--no-write``) put it in BENCHMARKS.md."""
    if write:
        write_section(title, body)
    print(body)


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured Markdown table of `rows` under `header` (`xvol_lab.markdown`)."""
    return frame_table(pd.DataFrame(rows, columns=header))
