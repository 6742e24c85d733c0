"""Model cost: FLOPs with `torch.utils.flop_counter`, counting PSSA's element-wise products too.

The stock formulas cover convolutions, matrix products and fused attention on CUDA; the CPU flash
attention kernel, which global attention reaches with contiguous inputs, has none, so its forward and
backward get the stock SDPA formulas here. The fused PSSA kernels (`xvol::pssa_fwd`, `xvol::pssa_bwd`
and their `_phased` forms) count 2 FLOPs per multiply-add over all taps T: forward 4*T*C*N' (logits
and aggregation, plus C*N' when a base is added), backward 10*T*C*N' (logits recomputed; da, dq, dk,
dv); their q/k/v projections are convolutions, counted as such (`xvol::conv1x1` and `_split` on CPU: 2 FLOPs per
multiply-add, like the stock convolution formula; a strided layer on CPU projects the
phase planes of x: its k and v cost S*S*H'*W' pixels, H*W or, for odd sizes, a padded row or
column more). On the composite path
PSSA's cost is in element-wise products (``q * k(p+t)`` summed over the head, ``a * v(p+t)``
accumulated), which the stock counter skips; they are added here at one FLOP per multiply and one per
add. The deploy form has no BatchNorm, so on it these formulas count PSSA and little else (activations
are not counted).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from xvol_lab.ops.kernels import xvol

aten = torch.ops.aten


def _numel(shape: Any) -> int:
    return math.prod(shape) if shape else 1


def _mul_flop(a_shape: Any, b_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return _numel(out_shape)


def _addcmul_flop(self_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return 2 * _numel(out_shape)


def _sum_flop(self_shape: Any, *args: Any, out_shape: Any = None, **kwargs: Any) -> int:
    return _numel(self_shape) - _numel(out_shape)


def _sdpa_flop(q_shape: Any, k_shape: Any, v_shape: Any, *args: Any, **kwargs: Any) -> int:
    return sdpa_flop_count(q_shape, k_shape, v_shape)


def _sdpa_backward_flop(grad_shape: Any, q_shape: Any, k_shape: Any, v_shape: Any, *args: Any,
                        **kwargs: Any) -> int:
    return sdpa_backward_flop_count(grad_shape, q_shape, k_shape, v_shape)


def _pssa_fwd_flop(q_shape: Any, k_shape: Any, v_shape: Any, base_shape: Any, heads: int, taps: list[int],
                   *args: Any, **kwargs: Any) -> int:
    return 4 * (len(taps) // 2) * _numel(q_shape) + (_numel(q_shape) if base_shape is not None else 0)


def _pssa_bwd_flop(grad_shape: Any, q_shape: Any, k_shape: Any, v_shape: Any, heads: int, taps: list[int],
                   *args: Any, **kwargs: Any) -> int:
    return 10 * (len(taps) // 2) * _numel(q_shape)


def _conv1x1_flop(x_shape: Any, w_shape: Any, *args: Any, **kwargs: Any) -> int:
    return 2 * _numel(x_shape) * w_shape[0]


# Keys are overload packets: FlopCounterMode looks ops up by packet.
ELEMENTWISE_FLOPS = {aten.mul: _mul_flop, aten.addcmul: _addcmul_flop, aten.addcmul_: _addcmul_flop,
                     aten.sum: _sum_flop}
SDPA_CPU_FLOPS = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_flop,
                  aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_backward_flop}
EXTRA_FLOPS = {**ELEMENTWISE_FLOPS, **SDPA_CPU_FLOPS,
               xvol.pssa_fwd: _pssa_fwd_flop, xvol.pssa_bwd: _pssa_bwd_flop,
               xvol.pssa_fwd_phased: _pssa_fwd_flop, xvol.pssa_bwd_phased: _pssa_bwd_flop,
               xvol.conv1x1: _conv1x1_flop, xvol.conv1x1_split: _conv1x1_flop}


def count_flops(model: nn.Module, inputs: Any) -> int:
    """FLOPs of one forward pass of `model` (eval, no grad) on `inputs` (a batch, or a shape for zeros)."""
    if isinstance(inputs, (tuple, torch.Size)) and all(isinstance(n, int) for n in inputs):
        param = next(model.parameters())
        inputs = torch.zeros(inputs, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS)
    training = model.training
    model.eval()
    try:
        with counter, torch.no_grad():
            model(inputs)
    finally:
        model.train(training)
    return counter.get_total_flops()
