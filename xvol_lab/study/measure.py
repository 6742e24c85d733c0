"""The objectives a study measures itself: parameters (millions) and latency (ms) of the deploy form.

Both are taken on the re-parameterized model (`build_classifier(..., deploy=True)`: BatchNorms
folded, X-volution branches merged), which is what inference runs. Latency is the median of
`repeats` timed forward passes of one image after `warmup` passes, on the trial's device (on CPU
with one thread, so that trials running side by side measure alike).
"""

from __future__ import annotations

import statistics
import time

import torch

from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.study.config import LATENCY_MS, PARAMS_M


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(spec: BackboneSpec, num_classes: int, image_size: int, device: torch.device | str = "cpu", *,
            warmup: int = 3, repeats: int = 10) -> dict[str, float]:
    """``{params_m, latency_ms}`` of the deploy form of `spec` with `num_classes` outputs."""
    device = torch.device(device)
    model = build_classifier(spec, num_classes, deploy=True).eval().to(device)
    params = sum(p.numel() for p in model.parameters())
    x = torch.randn(1, spec.in_chans, image_size, image_size, device=device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        times = []
        with torch.inference_mode():
            for i in range(warmup + repeats):
                _sync(device)
                start = time.perf_counter()
                model(x)
                _sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return {PARAMS_M: params / 1e6, LATENCY_MS: statistics.median(times) * 1e3}
