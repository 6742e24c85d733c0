"""Validation of operator options: every bad value fails at construction with a clear ValueError."""

from __future__ import annotations

from xvol_lab.schema import is_int


def check_channels(in_chs: int, out_chs: int) -> None:
    """Channel counts are positive integers."""
    for name, value in (("in_chs", in_chs), ("out_chs", out_chs)):
        if not is_int(value) or value < 1:
            raise ValueError(f"{name}: got {value!r}, expected a positive integer")


def check_stride(stride: int) -> int:
    """Stride is 1 or 2."""
    if stride not in (1, 2) or not is_int(stride):
        raise ValueError(f"stride: got {stride!r}, expected 1 or 2")
    return stride


def check_kernel_size(kernel_size: int) -> int:
    """The convolution kernel K is odd (so the output is ceil(H/s) with padding K//2)."""
    if not is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size: got {kernel_size!r}, expected an odd integer >= 1")
    return kernel_size


def _at_least_one(name: str, value: int) -> int:
    if not is_int(value) or value < 1:
        raise ValueError(f"{name}: got {value!r}, expected an integer >= 1")
    return value


def check_shift(shift: int) -> int:
    """The PSSA shift size L >= 1."""
    return _at_least_one("shift", shift)


def check_dirs(dirs: int) -> int:
    """PSSA directions: 4 (centre + axes) or 8 (centre + axes + diagonals)."""
    if dirs not in (4, 8) or not is_int(dirs):
        raise ValueError(f"dirs: got {dirs!r}, expected 4 or 8")
    return dirs


def check_stack(stack: int) -> int:
    """Number of stacked PSSA layers in the branch, >= 1."""
    return _at_least_one("stack", stack)


def resolve_heads(heads: int | None, out_chs: int) -> int:
    """Heads must divide out_chs; None picks head dim 64: the largest h <= out_chs // 64 dividing out_chs."""
    if heads is None:
        heads = max(1, out_chs // 64)
        while out_chs % heads:
            heads -= 1
        return heads
    if not is_int(heads) or heads < 1 or out_chs % heads:
        raise ValueError(f"heads: got {heads!r}, expected a positive divisor of out_chs={out_chs}")
    return heads
