"""X-volution operators: conv, sa, pssa, xvol_sa, xvol_pssa (and pointwise, an ablation row); registry and
re-parameterization."""

from xvol_lab.ops.attention_functions import global_attention, pixel_shift_attention, pssa_taps
from xvol_lab.ops.base import ReparamOp
from xvol_lab.ops.registry import OPS, create_op, op_options
from xvol_lab.ops.reparam import reparameterize

__all__ = [
    "OPS",
    "ReparamOp",
    "create_op",
    "global_attention",
    "op_options",
    "pixel_shift_attention",
    "pssa_taps",
    "reparameterize",
]
