"""Operator speed and memory against nn.Conv2d 3x3; writes the "Operators" section of BENCHMARKS.md.

    python benchmarks/ops.py [--quick] [--device cuda]

Every ratio is measured side by side in one run (interleaved repeats, medians). Memory is the peak
CUDA allocation on GPU; on CPU it is the activation memory autograd saves for the backward pass
(what forward+backward holds beyond the weights), counted exactly with saved-tensor hooks.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import (  # noqa: E402
    device_name,
    markdown_table,
    saved_activation_mib,
    time_interleaved,
    write_section,
)

from xvol_lab.ops import OPS, create_op, reparameterize  # noqa: E402

STAGES = [(64, 56), (128, 28), (256, 14), (512, 7)]  # ResNet stage (channels, resolution) at 224 px
GROWTH_SIZES = [28, 40, 56, 80, 112]
GROWTH_CHANNELS, GROWTH_BATCH = 64, 4  # large enough that compute, not per-call overhead, dominates


def peak_mb(fn: Callable[[], object], device: torch.device) -> float:
    """Peak memory of ``fn()``: CUDA max allocation, or saved activations on CPU."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return saved_activation_mib(fn)


def build(name: str, channels: int, device: torch.device) -> nn.Module:
    if name == "nn.Conv2d":
        return nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device)
    return create_op(name, channels, channels).to(device)


def fwd_bwd(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def run() -> None:
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()
    return run


def no_grad_fwd(module: nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def run() -> torch.Tensor:
        with torch.no_grad():
            return module(x)
    return run


def stage_table(device: torch.device, batch: int, repeats: int) -> tuple[str, dict]:
    names = ["nn.Conv2d", *OPS]
    rows, at = [], {}
    for channels, size in STAGES:
        x = torch.randn(batch, channels, size, size, device=device)
        xg = x.clone().requires_grad_(True)
        mods = {n: build(n, channels, device).train() for n in names}
        fwd = time_interleaved({n: no_grad_fwd(m, x) for n, m in mods.items()}, repeats, device=device)
        both = time_interleaved({n: fwd_bwd(m, xg) for n, m in mods.items()}, repeats, device=device)
        mem = {n: peak_mb(lambda m=m, xg=xg: m(xg).sum(), device) for n, m in mods.items()}
        for n in names:
            at[(n, channels)] = both[n] / both["nn.Conv2d"]
            rows.append([f"{channels}x{size}x{size}", n, f"{fwd[n] / fwd['nn.Conv2d']:.2f}",
                         f"{both[n] / both['nn.Conv2d']:.2f}", f"{mem[n]:.1f}",
                         f"{mem[n] / max(mem['nn.Conv2d'], 1e-9):.1f}"])
    header = ["shape (C x H x W)", "op", "fwd / conv", "fwd+bwd / conv", "memory MB", "memory / conv"]
    return markdown_table(header, rows), at


def deploy_table(device: torch.device, batch: int, repeats: int) -> tuple[str, list[float]]:
    rows, ratios = [], []
    for channels, size in STAGES:
        x = torch.randn(batch, channels, size, size, device=device)
        for name in OPS:
            op = create_op(name, channels, channels).to(device).eval()
            deployed = reparameterize(op)
            t = time_interleaved({"train": no_grad_fwd(op, x), "deploy": no_grad_fwd(deployed, x)}, repeats,
                                 device=device)
            ratios.append(t["train"] / t["deploy"])
            rows.append([f"{channels}x{size}x{size}", name, f"{t['train'] / t['deploy']:.2f}"])
    return markdown_table(["shape", "op", "eval speed-up of deploy over train form"], rows), ratios


def growth_exponents(device: torch.device, channels: int, batch: int, repeats: int) -> dict[str, float]:
    """Least-squares slope of log(time) against log(H*W) for the forward pass."""
    out = {}
    for name in ["nn.Conv2d", "sa", "pssa", "xvol_pssa"]:
        module = build(name, channels, device).eval()
        xs, ys = [], []
        for size in GROWTH_SIZES:
            x = torch.randn(batch, channels, size, size, device=device)
            t = time_interleaved({name: no_grad_fwd(module, x)}, repeats, device=device)[name]
            xs.append(math.log(size * size))
            ys.append(math.log(t))
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        covariance = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True))
        out[name] = covariance / sum((a - mx) ** 2 for a in xs)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    repeats = 3 if args.quick else 9
    batch = 8 if device.type == "cpu" else 32

    stages, at = stage_table(device, batch, repeats)
    deploy, speedups = deploy_table(device, batch, 3 * repeats)  # small differences: more samples
    growth = growth_exponents(device, GROWTH_CHANNELS, GROWTH_BATCH, max(3, repeats // 2))

    xp = at[("xvol_pssa", 256)]
    verdict = [
        f"- `pssa` time-growth exponent in H*W (28..112 px): **{growth['pssa']:.2f}** (target <= 1.15: "
        f"{'met' if growth['pssa'] <= 1.15 else 'MISSED'}); `xvol_pssa` {growth['xvol_pssa']:.2f}; "
        f"`sa` {growth['sa']:.2f} (expected ~2); nn.Conv2d {growth['nn.Conv2d']:.2f}.",
        f"- `xvol_pssa` forward+backward at 256x14x14: **{xp:.2f}x** conv (target <= 2.5: "
        f"{'met' if xp <= 2.5 else 'MISSED'}).",
        f"- Deploy form over train form in eval: {min(speedups):.2f}x to {max(speedups):.2f}x "
        f"({'faster at every shape' if min(speedups) > 1 else 'NOT faster at every shape'}).",
    ]
    if growth["pssa"] > 1.15:
        verdict.append(
            "- Why PSSA grows faster than linearly here: its work is linear in H*W (its FLOP count is "
            "exactly linear, tests/test_model_cost.py), but it is memory-bound: 9 shifted passes over "
            "(B, C, H, W) tensors that stop fitting in cache past ~56 px (nn.Conv2d shows the same effect, "
            "less). What would close it: a fused kernel (logits, softmax and aggregation in one pass per "
            "tile). Channels-last was tried: 1.7x on the PSSA kernel alone, but 0.9-1.4x per op once the op "
            "converts NCHW inputs (slower at 56 px), so it was not merged; it pays only with a channels-last "
            "network end to end.")
    if min(speedups) <= 1:
        verdict.append(
            "- Why the deploy form is not faster: in eval the train form's extra work is two BatchNorms "
            "and one add, a few element-wise passes against the ~30 of the attention branch, so the two "
            "forms are within noise (+-5%) of each other; the merge buys one set of weights (one dynamic "
            "kernel) and fewer parameters, not time. A fused dynamic-convolution kernel would make the "
            "merge pay off in time.")
    body = "\n".join([
        f"Device: {device_name(device)}; torch {torch.__version__}; batch {batch}; medians of {repeats} "
        "interleaved repeats. Ops at default options (pssa L=1, dirs=8, stack=1; heads = C/64). "
        "Memory: " + ("peak CUDA allocation of forward." if device.type == "cuda" else
                      "activation memory saved by autograd for backward (CPU)."),
        "", *verdict, "", "### Against nn.Conv2d 3x3 (train form)", "", stages,
        "", f"### Deploy (re-parameterized) against train form, eval, no grad ({3 * repeats} repeats)", "",
        deploy, "",
        f"### Growth with resolution (C={GROWTH_CHANNELS}, batch {GROWTH_BATCH}, sizes {GROWTH_SIZES})", "",
        markdown_table(["op", "exponent of time in H*W"], [[k, f"{v:.2f}"] for k, v in growth.items()]),
    ])
    title = f"Operators (benchmarks/ops.py, {device.type})"
    if args.no_write:
        print(body)
    else:
        write_section(title, body)
        print(body)


if __name__ == "__main__":
    main()
