"""The self-attention branch: q/k/v 1x1 projections + global (sa) or pixel-shift (pssa) attention."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from xvol_lab.ops.attention_functions import global_attention, pixel_shift_attention, pixel_shift_weights, pssa_taps
from xvol_lab.ops.kernels.backends import compute_dtype, pssa_backend
from xvol_lab.ops.kernels.projection import project_qkv
from xvol_lab.ops.kernels.pssa_autograd import fused_pixel_shift_attention


@dataclass(frozen=True)
class AttentionConfig:
    """What an attention branch computes: mode, heads, and PSSA's shift L, dirs and stack depth."""

    mode: Literal["sa", "pssa"]
    heads: int
    shift: int = 1
    dirs: int = 8
    stack: int = 1

    @property
    def taps(self) -> tuple[tuple[int, int], ...]:
        return pssa_taps(self.shift, self.dirs)


class AttentionLayer(nn.Module):
    """One attention layer, no normalisation: ``q = W_q x`` on the stride grid, ``k, v`` at full size.

    ``qkv.weight`` stacks W_q, W_k, W_v (3*C_out rows); in the deploy form its W_v rows carry the
    folded BatchNorm scale of the branch (the dynamic kernel basis W~_v of the reference), and with
    ``bias=True`` the v rows of ``qkv.bias`` its shift (q and k rows zero): since the attention
    weights of each query sum to 1, a bias on v is a bias on the output.
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, cfg: AttentionConfig,
                 bias: bool = False) -> None:
        super().__init__()
        self.out_chs, self.stride, self.cfg = out_chs, stride, cfg
        self.qkv = nn.Conv2d(in_chs, 3 * out_chs, 1, bias=bias)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, C, H', W') on the stride grid; k, v (B, C, H, W)."""
        return project_qkv(x, self.qkv.weight, self.qkv.bias, self.stride)

    def forward(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        """Attention output (B, C_out, H', W'); with `out`, out + attention (possibly `out` updated).

        PSSA runs the fused kernels where `pssa_backend` has one for the device and dtype (no flag);
        the composite path otherwise, and during ONNX export (the fused ops have no ONNX form).
        """
        if self.cfg.mode == "pssa":
            dtype = compute_dtype(x)
            if pssa_backend(x.device, dtype) != "torch" and not torch.onnx.is_in_onnx_export():
                return fused_pixel_shift_attention(x, self.qkv.weight, self.qkv.bias,
                                                   self.cfg.heads, self.cfg.taps, self.stride, dtype, out)
        q, k, v = self.project(x)
        if self.cfg.mode == "sa":
            return global_attention(q, k, v, self.cfg.heads, out)
        return pixel_shift_attention(q, k, v, self.cfg.heads, self.cfg.taps, self.stride, out)

    def pssa_weights(self, x: Tensor) -> Tensor:
        """PSSA coefficients a_i(p, t) for input x: (B, heads, T, H', W')."""
        q, k, _ = self.project(x)
        return pixel_shift_weights(q, k, self.cfg.heads, self.cfg.taps, self.stride)


class AttentionBranch(nn.Sequential):
    """``cfg.stack`` layers in sequence: the first maps C_in -> C_out at `stride`, the rest C_out -> C_out.

    ``last_bias`` gives the last layer a qkv bias (the deploy form of a stand-alone attention op).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, cfg: AttentionConfig,
                 last_bias: bool = False) -> None:
        chans = [in_chs] + [out_chs] * cfg.stack
        super().__init__(*[AttentionLayer(chans[i], out_chs, stride if i == 0 else 1, cfg,
                                          bias=last_bias and i == cfg.stack - 1) for i in range(cfg.stack)])

    def forward(self, x: Tensor, out: Tensor | None = None) -> Tensor:
        for layer in list(self)[:-1]:
            x = layer(x)
        return self[-1](x, out)


def fold_bn_into_branch(state: dict[str, Tensor], prefix: str, stack: int, out_chs: int,
                        g: Tensor, c: Tensor | None = None) -> dict[str, Tensor]:
    """Fold BN(z) = g*z + c into the last layer: W_v rows scaled by g, and c as the v bias when given.

    Exact because the attention weights of each query sum to 1.
    """
    key = f"{prefix}.{stack - 1}.qkv"
    w = state[f"{key}.weight"]
    state = {**state, f"{key}.weight": w * torch.cat([w.new_ones(2 * out_chs), g]).view(-1, 1, 1, 1)}
    if c is not None:
        state[f"{key}.bias"] = torch.cat([c.new_zeros(2 * out_chs), c])  # q and k rows stay unbiased
    return state


def set_taps(op: nn.Module, shift: int, dirs: int) -> None:
    """Make PSSA operator `op` (and every attention layer in it) attend over the taps T(shift, dirs).

    The weights do not change: q/k/v are 1x1 projections whatever the taps, so one instance computes
    every shift L and direction set (the supernet's weight sharing, `xvol_lab.models.supernet`).
    """
    for module in op.modules():
        cfg = getattr(module, "cfg", None)
        if isinstance(cfg, AttentionConfig):
            module.cfg = dataclasses.replace(cfg, shift=shift, dirs=dirs)
        if hasattr(module, "shift") and hasattr(module, "dirs") and isinstance(cfg, AttentionConfig):
            module.shift, module.dirs = shift, dirs
