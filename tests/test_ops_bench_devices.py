"""The benchmark scripts use the device they are given (#12 item 10), checked on CPU by recording the
CUDA calls they make."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _report  # noqa: E402
import train as train_bench  # noqa: E402


def _record_cuda(monkeypatch) -> list[tuple[str, object]]:
    calls: list[tuple[str, object]] = []
    for name in ("synchronize", "reset_peak_memory_stats", "memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, lambda device=None, _n=name: calls.append((_n, device)) or 0)
    return calls


def test_sync_and_peak_memory_use_the_given_device(monkeypatch):
    calls = _record_cuda(monkeypatch)
    device = torch.device("cuda", 1)
    _report.sync(device)
    _report.cuda_peak_mib(lambda: None, device)
    assert calls and all(d == device for _, d in calls)
    assert {n for n, _ in calls} == {"synchronize", "reset_peak_memory_stats", "memory_allocated",
                                     "max_memory_allocated"}
    _report.sync("cpu")  # nothing to wait for on the CPU
    assert len(calls) == 6


def test_lightning_loop_runs_on_the_given_cuda_device(monkeypatch):
    seen = {}

    class FakeTrainer:
        def __init__(self, **kwargs):
            seen.update(kwargs)

        def fit(self, *args, **kwargs):
            pass

    monkeypatch.setattr(train_bench.L, "Trainer", FakeTrainer)
    train_bench.lightning_loop(None, None, torch.device("cuda", 1), 1)
    assert seen["accelerator"] == "cuda" and seen["devices"] == [1]
    train_bench.lightning_loop(None, None, torch.device("cpu"), 1)
    assert seen["accelerator"] == "cpu" and seen["devices"] == 1


def test_lightning_timer_synchronises_only_at_both_ends(monkeypatch):
    """Like the bare loop: one sync when timing starts, one after the last batch, none in between."""
    calls = _record_cuda(monkeypatch)
    device = torch.device("cuda", 1)
    timer = train_bench._Timer(warmup=2, device=device)

    class FakeTrainer:
        num_training_batches = 10

    for i in range(10):
        timer.on_train_batch_start(FakeTrainer, None, None, i)
        timer.on_train_batch_end(FakeTrainer, None, None, None, i)
    assert calls == [("synchronize", device)] * 2
    assert timer.end >= timer.start > 0
