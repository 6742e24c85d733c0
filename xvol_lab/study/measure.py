"""What a study measures itself on a trained trial: parameters, FLOPs and latency of the deploy form.

All are taken on the re-parameterized network of the trial's task (BatchNorms folded, X-volution
branches merged: what inference runs). FLOPs: one image, `xvol_lab.models.cost.count_flops`.
Latency: the median of `repeats` timed forward passes after `warmup` passes, at batch 1 and at the
study's batch size, on the trial's device (on CPU with one thread, so that trials running side by
side measure alike).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn

from xvol_lab.config import RunConfig
from xvol_lab.models.cost import count_flops
from xvol_lab.study.config import FLOPS_G, LATENCY_BATCH_MS, LATENCY_MS, PARAMS_M
from xvol_lab.tasks.registry import build_network, example_inputs


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latency_ms(model: nn.Module, inputs: Any, device: torch.device, warmup: int, repeats: int) -> float:
    """Median milliseconds of ``model(inputs)`` in inference mode."""
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            _sync(device)
            start = time.perf_counter()
            model(inputs)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def measure(config: RunConfig, num_classes: int, device: torch.device | str = "cpu", *,
            warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """``{params_m, flops_g, latency_ms, latency_batch_ms}`` of the deploy form of `config`'s network."""
    device = torch.device(device)
    model = build_network(config, num_classes, deploy=True).eval().to(device)
    params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, example_inputs(config, 1, device))
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        single, batch = (latency_ms(model, example_inputs(config, n, device), device, warmup, repeats)
                         for n in (1, config.data.batch_size))
    finally:
        torch.set_num_threads(threads)
    return {PARAMS_M: params / 1e6, FLOPS_G: flops / 1e9, LATENCY_MS: single, LATENCY_BATCH_MS: batch}
