"""What a study measures itself on a trained trial: parameters, FLOPs and latency of the deploy form.

All are taken on the trained network of the trial (its best checkpoint), re-parameterized
(BatchNorms folded, X-volution branches merged: what inference runs), fed with validation images
of the trial's data: a detector's cost depends on how many boxes the trained model keeps, which a
fresh network on random inputs does not show. FLOPs: one image, `xvol_lab.models.cost.count_flops`
(a multiply-add counts 2). Latency: the median of `repeats` timed forward passes at batch 1 and at
the study's batch size (capped at `MAX_LATENCY_BATCH` images: a batch size of 100000 once took
23 GB and the machine's OOM killer), in the training precision (autocast for the mixed ones), after warm-up
passes (at least `warmup`, and on a GPU at least `WARMUP_S` seconds: clocks, allocator and kernel
selection settle), synchronising the trial's own device around each pass. On the CPU it runs on
one thread, so that trials running side by side measure alike. ``latency_device`` names the
hardware. The trainer's memory is released first; a failure here (out of memory) is logged and
returned as ``measure_error``, so the trained trial stands without these figures.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import platform
import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xvol_lab.models.cost import count_flops
from xvol_lab.ops import reparameterize
from xvol_lab.study.config import (
    FLOPS_G,
    LATENCY_BATCH_MS,
    LATENCY_DEVICE,
    LATENCY_MS,
    MEASURE_ERROR,
    PARAMS_M,
)
from xvol_lab.tasks.config import RunConfig
from xvol_lab.tasks.export import load_trained, validation_batch
from xvol_lab.tasks.runner import CHECKPOINT_DIR

log = logging.getLogger(__name__)

WARMUP_S = 1.0
MAX_LATENCY_BATCH = 256  # images in the batch of latency_batch_ms, at most
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def device_name(device: torch.device) -> str:
    """The hardware of `device`: the GPU's name, or the CPU's model (``cpu: <model>``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{device.type}: {model}"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def precision_of(config: RunConfig, device: torch.device) -> Iterator[None]:
    """Autocast as the training precision says (nothing for the 'true' precisions)."""
    dtype = AUTOCAST.get(config.trainer.precision)
    with torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
        yield


def latency_ms(model: nn.Module, inputs: Any, device: torch.device, warmup: int, repeats: int,
               precision: contextlib.AbstractContextManager | None = None) -> float:
    """Median milliseconds of ``model(inputs)`` in inference mode (see the module doc for warm-up)."""
    times = []
    with torch.inference_mode(), precision or contextlib.nullcontext():
        start = time.perf_counter()
        done = 0
        while done < warmup or (device.type == "cuda" and time.perf_counter() - start < WARMUP_S):
            model(inputs)
            _sync(device)
            done += 1
        for _ in range(repeats):
            _sync(device)
            start = time.perf_counter()
            model(inputs)
            _sync(device)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def _batch(images: Any, n: int) -> Any:
    """`n` images from `images` (a tensor or a list), repeated when there are fewer."""
    repeats = -(-n // len(images))
    if isinstance(images, list):
        return (images * repeats)[:n]
    return images.repeat(repeats, *([1] * (images.dim() - 1)))[:n]


def _to(images: Any, device: torch.device, dtype: torch.dtype) -> Any:
    if isinstance(images, list):
        return [i.to(device, dtype) for i in images]
    return images.to(device, dtype)


def trained_deploy_network(config: RunConfig, run_dir: Path) -> nn.Module:
    """The re-parameterized network of the run's best checkpoint, in eval mode, on the CPU."""
    task = load_trained(Path(run_dir) / CHECKPOINT_DIR / "best.ckpt", config.task)
    return reparameterize(task.model.eval())


def _measure(config: RunConfig, run_dir: Path, device: torch.device, warmup: int,
             repeats: int) -> dict[str, Any]:
    dtype = torch.float64 if config.trainer.precision == "64-true" else torch.float32
    model = trained_deploy_network(config, run_dir).to(device, dtype)
    params = sum(p.numel() for p in model.parameters())
    size = min(config.data.batch_size, MAX_LATENCY_BATCH)
    images, _ = validation_batch(config, size)
    single, batch = _to(_batch(images, 1), device, dtype), _to(_batch(images, size), device, dtype)
    flops = count_flops(model, single)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        one, many = (latency_ms(model, inputs, device, warmup, repeats, precision_of(config, device))
                     for inputs in (single, batch))
    finally:
        torch.set_num_threads(threads)
    return {PARAMS_M: params / 1e6, FLOPS_G: flops / 1e9, LATENCY_MS: one, LATENCY_BATCH_MS: many,
            LATENCY_DEVICE: device_name(device)}


def measure(config: RunConfig, device: torch.device | str = "cpu", *, run_dir: str | Path, warmup: int = 5,
            repeats: int = 10) -> dict[str, Any]:
    """``{params_m, flops_g, latency_ms, latency_batch_ms, latency_device}`` of the trained deploy
    network of the run `config` in `run_dir` (see the module doc); ``{measure_error: ...}`` when
    that fails."""
    device = torch.device(device)
    gc.collect()  # the trainer, its optimiser state and loaders are gone: give their memory back
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        result = _measure(config, Path(run_dir), device, warmup, repeats)
    except Exception as err:  # out of memory above all; the trained trial stands without the figures
        lines = str(err).strip().splitlines()
        reason = f"{type(err).__name__}: {lines[0] if lines else ''}"
        log.warning("%s: measuring the deploy network failed (%s)", run_dir, reason)
        return {MEASURE_ERROR: reason}
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


__all__ = ["device_name", "latency_ms", "measure", "precision_of",
           "trained_deploy_network"]
