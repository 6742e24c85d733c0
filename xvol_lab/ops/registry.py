"""The operator registry: one flat dict from name to class, and `create_op`."""

from __future__ import annotations

from typing import Any

from torch import nn

from xvol_lab.ops.attention_ops import PixelShiftSelfAttention, SelfAttention
from xvol_lab.ops.base import ReparamOp
from xvol_lab.ops.conv import ConvBN
from xvol_lab.ops.pointwise import PointwiseBN
from xvol_lab.ops.xvolution import XVolutionPSSA, XVolutionSA

OPS: dict[str, type[ReparamOp]] = {
    "conv": ConvBN,
    "sa": SelfAttention,
    "pssa": PixelShiftSelfAttention,
    "xvol_sa": XVolutionSA,
    "xvol_pssa": XVolutionPSSA,
    "pointwise": PointwiseBN,  # no spatial mixing: the positive control of the long-range proxy
}


def _op_class(name: str) -> type[ReparamOp]:
    if name not in OPS:
        raise ValueError(f"op: unknown operator {name!r}; expected one of {', '.join(OPS)}")
    return OPS[name]


def op_options(name: str) -> dict[str, Any]:
    """The options operator `name` takes, with their defaults (heads None = head dim 64)."""
    return dict(_op_class(name).OPTIONS)


def create_op(name: str, in_chs: int, out_chs: int, stride: int = 1, *, deploy: bool = False,
              **opts: Any) -> nn.Module:
    """Build operator `name` ``(in_chs -> out_chs, stride)``; unknown names or options raise ValueError."""
    cls = _op_class(name)
    unknown = sorted(set(opts) - set(cls.OPTIONS))
    if unknown:
        valid = ", ".join(cls.OPTIONS) or "none"
        raise ValueError(f"{unknown[0]}: not an option of op {name!r}; expected one of {valid}")
    return cls(in_chs, out_chs, stride, deploy=deploy, **opts)
