"""GPU check, step 4: the PSSA kernels alone against cuDNN's 3x3 convolution at every ResNet stage shape,
batch 64 and 128, bf16, channels-last, forward and forward+backward.

PSSA: `xvol::pssa_fwd` (and `xvol::pssa_bwd`) on given q, k, v (C channels each, heads of 64, dirs 8,
L 1); the convolution: C -> C, 3x3, padding 1, with autograd's dgrad and wgrad. Achieved GB/s counts the
compulsory traffic once: forward q, k, v read and y written; backward g, q, k, v read, dq, dk, dv written
and the float32 (heads, taps) softmax buffers written and read once. Timing: `Timer.blocked_autorange`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu import StepTable, configure, step_args, timed  # noqa: E402

from xvol_lab.ops import pssa_taps  # noqa: E402
from xvol_lab.ops.kernels import xvol  # noqa: E402
from xvol_lab.ops.kernels.backends import pssa_backend  # noqa: E402
from xvol_lab.ops.kernels.schemas import flat_taps  # noqa: E402

STAGES = [(64, 56), (128, 28), (256, 14), (512, 7)]  # ResNet stage (3x3 width, resolution) at 224 px
TAPS = flat_taps(pssa_taps(1, 8))


def pssa_bytes(batch: int, channels: int, size: int, heads: int, backward: bool) -> int:
    """Compulsory bytes of the kernels (see the module docstring), bf16 tensors, float32 buffers."""
    tensor = batch * channels * size * size * 2
    forward = 4 * tensor
    buffers = 2 * 2 * batch * heads * (len(TAPS) // 2) * size * size * 4  # a and ds, written and read
    return forward + (7 * tensor + buffers if backward else 0)


def measure(channels: int, size: int, batch: int, device: torch.device) -> list[object]:
    heads = max(1, channels // 64)
    cl = torch.channels_last

    def make(grad: bool = False) -> torch.Tensor:
        t = torch.randn(batch, channels, size, size, device=device, dtype=torch.bfloat16).to(memory_format=cl)
        return t.requires_grad_(grad)

    q, k, v, g = make(), make(), make(), make()
    x = make(grad=True)
    w = (torch.randn(channels, channels, 3, 3, device=device, dtype=torch.bfloat16) * 0.05).to(
        memory_format=cl).requires_grad_()
    pssa_fwd = timed(lambda: xvol.pssa_fwd(q, k, v, None, heads, TAPS, 1))
    pssa_both = timed(lambda: (xvol.pssa_fwd(q, k, v, None, heads, TAPS, 1),
                               xvol.pssa_bwd(g, q, k, v, heads, TAPS, 1)))
    with torch.no_grad():
        conv_fwd = timed(lambda: F.conv2d(x, w, padding=1))
    conv_both = timed(lambda: F.conv2d(x, w, padding=1).backward(g))
    gbs = [pssa_bytes(batch, channels, size, heads, bwd) / t / 1e9 for bwd, t in ((False, pssa_fwd),
                                                                                    (True, pssa_both))]
    return [f"{channels}x{size}x{size}", batch, heads, f"{pssa_fwd * 1e3:.3f}", f"{gbs[0]:.0f}",
            f"{conv_fwd * 1e3:.3f}", f"{pssa_fwd / conv_fwd:.2f}", f"{pssa_both * 1e3:.3f}", f"{gbs[1]:.0f}",
            f"{conv_both * 1e3:.3f}", f"{pssa_both / conv_both:.2f}"]


def main() -> None:
    args = step_args(__doc__)
    configure(args.device)
    backend = pssa_backend(args.device, torch.bfloat16)
    stages, batches = ([(16, 8), (32, 4)], [2]) if args.tiny else (STAGES, [64, 128])
    table = StepTable(
        "4. PSSA kernels against cuDNN 3x3 (bf16, channels-last)",
        ["C x H x W", "batch", "heads", "PSSA fwd ms", "GB/s", "conv fwd ms", "PSSA / conv",
         "PSSA fwd+bwd ms", "GB/s", "conv fwd+bwd ms", "PSSA / conv"],
        f"PSSA backend: {backend}; {args.device}. See benchmarks/gpu_kernels.py for what GB/s counts.", args.out)
    for batch in batches:
        for channels, size in stages:
            table.add(measure(channels, size, batch, args.device))


if __name__ == "__main__":
    main()
