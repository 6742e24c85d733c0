"""The self-attention branch: q/k/v 1x1 projections + global (sa) or pixel-shift (pssa) attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xvol_lab.ops.attention import global_attention, pixel_shift_attention, pixel_shift_weights, pssa_taps


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
    folded BatchNorm scale of the branch (the dynamic kernel basis W~_v of the reference).
    """

    def __init__(self, in_chs: int, out_chs: int, stride: int, cfg: AttentionConfig) -> None:
        super().__init__()
        self.out_chs, self.stride, self.cfg = out_chs, stride, cfg
        self.qkv = nn.Conv2d(in_chs, 3 * out_chs, 1, bias=False)

    def project(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, C, H', W') on the stride grid; k, v (B, C, H, W)."""
        c, w = self.out_chs, self.qkv.weight
        if self.stride == 1:
            q, k, v = F.conv2d(x, w).chunk(3, dim=1)
            return q, k, v
        q = F.conv2d(x[:, :, :: self.stride, :: self.stride], w[:c])
        k, v = F.conv2d(x, w[c:]).chunk(2, dim=1)
        return q, k, v

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.project(x)
        if self.cfg.mode == "sa":
            return global_attention(q, k, v, self.cfg.heads)
        return pixel_shift_attention(q, k, v, self.cfg.heads, self.cfg.taps, self.stride)

    def pssa_weights(self, x: Tensor) -> Tensor:
        """PSSA coefficients a_i(p, t) for input x: (B, heads, T, H', W')."""
        q, k, _ = self.project(x)
        return pixel_shift_weights(q, k, self.cfg.heads, self.cfg.taps, self.stride)


def build_attention_branch(in_chs: int, out_chs: int, stride: int, cfg: AttentionConfig) -> nn.Sequential:
    """``cfg.stack`` layers in sequence: the first maps C_in -> C_out at `stride`, the rest C_out -> C_out."""
    layers = [AttentionLayer(in_chs, out_chs, stride, cfg)]
    layers += [AttentionLayer(out_chs, out_chs, 1, cfg) for _ in range(cfg.stack - 1)]
    return nn.Sequential(*layers)


def fold_bn_into_branch(state: dict[str, Tensor], prefix: str, stack: int, out_chs: int,
                        g: Tensor) -> dict[str, Tensor]:
    """Scale the last layer's W_v rows by the BatchNorm gain g (attention weights sum to 1)."""
    key = f"{prefix}.{stack - 1}.qkv.weight"
    w = state[key]
    scale = torch.cat([w.new_ones(2 * out_chs), g.to(w.dtype)])  # W_q, W_k unchanged; W_v scaled
    return {**state, key: w * scale.view(-1, 1, 1, 1)}
