"""Shared parts of the GPU check's steps (benchmarks/gpu_check.sh): CUDA settings, GPU timing, and the
"GPU check" section of BENCHMARKS.md, which every step extends row by row as it measures.

Timing: `timed` runs torch.utils.benchmark's `Timer.blocked_autorange` (blocks of calls between two
device synchronisations; the median of the blocks' per-call times), `event_seconds` brackets a run of
steps with CUDA events. Neither syncs per call, so sub-millisecond kernels are timed, not launches.
The CPU (`--device cpu --tiny`) is accepted for a smoke run of a step's code; its figures say so.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import torch
from _report import BENCHMARKS_MD, device_name, markdown_table, write_section
from torch.utils.benchmark import Timer

from xvol_lab.atomic import write_text

SECTION = "GPU check (benchmarks/gpu_check.sh)"


def step_args(doc: str, modes: tuple[str, ...] = ()) -> argparse.Namespace:
    """The options every step takes: --device, --tiny (smoke sizes, for a CPU run of the code), --out; and
    the step's own `modes` (flags, at most one given)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    if modes:  # an empty group breaks --help
        group = parser.add_mutually_exclusive_group()
        for mode in modes:
            group.add_argument(f"--{mode}", action="store_true")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu for a smoke run with --tiny")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and few steps (checks the code runs)")
    parser.add_argument("--out", type=Path, default=BENCHMARKS_MD, help="the Markdown file to extend")
    args = parser.parse_args()
    args.device = torch.device(args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.exit(2, f"{parser.prog}: --device {args.device}: no CUDA device visible\n")
    return args


def configure(device: torch.device) -> str:
    """Set the CUDA knobs every step runs with, explicitly, and describe them: cuDNN autotuning on, TF32
    for float32 matmuls and convolutions (what an H100 user gets; the bf16 figures do not depend on it)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return "cudnn.benchmark=True, cudnn.allow_tf32=True, float32 matmul precision 'high'"


def versions(device: torch.device) -> str:
    """Device, driver, CUDA, torch and Triton versions in one line."""
    parts = [device_name(device)]
    if device.type == "cuda":
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader",
                                     f"--id={device.index or 0}"], capture_output=True, text=True,
                                    timeout=20).stdout.strip() or "unknown"
        except (OSError, subprocess.TimeoutExpired):
            driver = "unknown (no nvidia-smi)"
        parts += [f"driver {driver}", f"CUDA {torch.version.cuda}"]
    try:
        import triton

        parts.append(f"Triton {triton.__version__}")
    except ImportError:
        parts.append("no Triton")
    parts.append(f"torch {torch.__version__}")
    return ", ".join(parts)


def bf16_step(model: Callable[[torch.Tensor], torch.Tensor], optimizer: torch.optim.Optimizer,
              images: torch.Tensor, labels: torch.Tensor) -> None:
    """One optimiser step: cross-entropy of `model` under bf16 autocast on the images' device."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], min_run_time: float = 0.2) -> float:
    """Median seconds per call of `fn` (`Timer.blocked_autorange`; one warm-up call first)."""
    fn()
    return Timer(stmt="fn()", globals={"fn": fn}).blocked_autorange(min_run_time=min_run_time).median


class Stopwatch:
    """Device time between `start` and `stop`: CUDA events on CUDA (no sync until `stop`), wall time on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.begin: torch.cuda.Event | float = 0.0

    def start(self) -> None:
        if self.cuda:
            self.begin = torch.cuda.Event(enable_timing=True)
            self.begin.record()
        else:
            self.begin = time.perf_counter()

    def stop(self) -> float:
        """Seconds since `start` (waits for the device work queued in between)."""
        if not self.cuda:
            return time.perf_counter() - self.begin
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return self.begin.elapsed_time(end) / 1e3


def event_seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds of the device work queued by one ``fn()`` (`Stopwatch`)."""
    watch = Stopwatch(device)
    watch.start()
    fn()
    return watch.stop()


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated since the last `reset_peak(device)` (0 on CPU: not measured)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)


class StepTable:
    """One step's table under the "GPU check" section of `path`, rewritten (atomically) after every row,
    so that a step stopped by its time limit keeps the rows it measured."""

    def __init__(self, title: str, header: list[str], note: str, path: Path = BENCHMARKS_MD) -> None:
        self.title, self.header, self.note, self.path = title, header, note, path
        self.rows: list[list[object]] = []
        self._write()

    def add(self, row: list[object]) -> None:
        self.rows.append(row)
        print(" | ".join(map(str, row)), flush=True)
        self._write()

    def _write(self) -> None:
        table = markdown_table(self.header, self.rows) if self.rows else "(no rows yet)"
        write_subsection(self.title, f"{self.note}\n\n{table}", self.path)


def start_section(header: str, path: Path = BENCHMARKS_MD) -> None:
    """Begin this run's "GPU check" section, as the file's last (the previous run's is dropped): the
    steps add their tables to it, and gpu_check.sh appends each step's outcome to the file's end."""
    text = path.read_text() if path.exists() else ""
    text = re.sub(rf"^## {re.escape(SECTION)}\n.*?(?=^## |\Z)", "", text, flags=re.S | re.M)
    write_text(path, text.rstrip() + "\n")
    write_section(SECTION, header, path)


def write_subsection(title: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) ``### title`` inside the "GPU check" section of `path`."""
    text = path.read_text() if path.exists() else ""
    found = re.search(rf"^## {re.escape(SECTION)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    current = found.group(1).strip() if found else "(no machine step ran: versions unknown)"
    block = f"### {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^### {re.escape(title)}\n.*?(?=^### |\Z)", re.S | re.M)
    current = pattern.sub(lambda _: block + "\n", current) if pattern.search(current) else f"{current}\n\n{block}"
    write_section(SECTION, current, path)
