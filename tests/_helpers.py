"""Test helpers shared by several test files (imported as a plain module from tests/)."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn

from xvol_lab.models.detection import DetectorConfig
from xvol_lab.schema import to_dict

BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)

# The tests' detector: 64 px images, a 16-channel FPN and few proposals, so that it trains in seconds.
TINY_DETECTOR = DetectorConfig(min_size=64, max_size=64, fpn_channels=16, anchor_sizes=(8, 16, 32, 64, 128),
                               rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=64,
                               rpn_post_nms_top_n_test=32, box_batch_size_per_image=32, box_detections_per_img=20)


def tiny_detector(**changes: Any) -> DetectorConfig:
    """`TINY_DETECTOR` with `changes` (DetectorConfig fields)."""
    return dataclasses.replace(TINY_DETECTOR, **changes)


def detector_fields(config: DetectorConfig = TINY_DETECTOR) -> dict[str, Any]:
    """The fields of `config` that differ from torchvision's defaults, as plain values."""
    default = to_dict(DetectorConfig())
    return {k: v for k, v in to_dict(config).items() if v != default[k]}


def detector_overrides(config: DetectorConfig = TINY_DETECTOR) -> list[str]:
    """`config` as ``--set`` overrides (``detector.KEY=VALUE``) of `lab.py` and `load_run_config`."""
    return [f"detector.{k}={json.dumps(v)}" for k, v in detector_fields(config).items()]


def detector_yaml(config: DetectorConfig = TINY_DETECTOR) -> str:
    """`config` as the flow mapping of a YAML ``detector:`` section."""
    return json.dumps(detector_fields(config))


def randomize_batchnorm(model: nn.Module, seed: int = 0,
                        gamma: tuple[float, float] = (0.5, 1.5)) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (weight uniform in
    `gamma`), so that eval-mode BatchNorm is not the identity and folding is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, BATCHNORMS):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) * (gamma[1] - gamma[0]) + gamma[0])
                m.bias.copy_(torch.rand(n, generator=gen) * 2 - 1)
    return model


def assert_close_scaled(actual: Tensor, expected: Tensor, tol: float) -> None:
    """The spec's bound |actual - expected| <= tol * max(1, |expected|), elementwise."""
    scale = expected.abs().clamp(min=1)
    torch.testing.assert_close(actual / scale, expected / scale, atol=tol, rtol=0)


def writes_by_concurrent_callers(module: Any, generate: Callable[[Any], Any], cfg: Any, log: Path,
                                 monkeypatch: Any, callers: int = 3) -> int:
    """Run `generate(cfg)` in `callers` forked processes at once, with `module._write` slowed down and
    logged, and return how many processes wrote the dataset (1 when the generation lock works)."""
    real_write = module._write

    def slow_logged_write(folder: Path, *args: Any) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # the others arrive while this one writes
        real_write(folder, *args)

    monkeypatch.setattr(module, "_write", slow_logged_write)
    ctx = multiprocessing.get_context("fork")  # children inherit the patched _write
    procs = [ctx.Process(target=generate, args=(cfg,)) for _ in range(callers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    monkeypatch.setattr(module, "_write", real_write)
    assert [p.exitcode for p in procs] == [0] * callers
    return len(log.read_text().splitlines())


def _gloo_rank(rank: int, world_size: int, store: str, queue: Any, target: Callable[..., Any],
               args: tuple[Any, ...]) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    try:
        queue.put((rank, target(rank, *args)))
    finally:
        dist.destroy_process_group()


def gloo_ranks(target: Callable[..., Any], *args: Any, world_size: int = 2,
               timeout: float = 120) -> list[Any]:
    """``target(rank, *args)`` in `world_size` forked processes that form one gloo process group;
    their return values, by rank. Every process must exit cleanly."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as folder:
        store = f"{folder}/store"
        procs = [ctx.Process(target=_gloo_rank, args=(rank, world_size, store, queue, target, args))
                 for rank in range(world_size)]
        for p in procs:
            p.start()
        results = dict(queue.get(timeout=timeout) for _ in procs)
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0] * world_size
    return [results[rank] for rank in range(world_size)]


class Preempt(Callback):
    """Sends this process SIGTERM at the end of training step `step` (as scancel would)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)
