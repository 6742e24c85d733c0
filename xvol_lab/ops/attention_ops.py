"""`sa` and `pssa`: a self-attention branch followed by BatchNorm (deploy: BN folded into W_v)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from torch import Tensor, nn

from xvol_lab.ops.attention_branch import AttentionBranch, AttentionConfig, fold_bn_into_branch
from xvol_lab.ops.base import ReparamOp
from xvol_lab.ops.bn_folding import bn_affine
from xvol_lab.ops.options import (
    check_channels,
    check_dirs,
    check_shift,
    check_stack,
    check_stride,
    resolve_heads,
)


def attention_config(mode: Literal["sa", "pssa"], out_chs: int, heads: int | None, shift: int = 1,
                     dirs: int = 8, stack: int = 1) -> AttentionConfig:
    """Validated attention-branch options (heads resolved against out_chs)."""
    return AttentionConfig(mode, resolve_heads(heads, out_chs), check_shift(shift), check_dirs(dirs),
                           check_stack(stack))


class _AttentionOp(ReparamOp):
    """attention branch -> BatchNorm. Deploy: the branch with W~_v = g * W_v and the v bias c."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, cfg: AttentionConfig, deploy: bool) -> None:
        check_channels(in_chs, out_chs)
        super().__init__(in_chs, out_chs, check_stride(stride), deploy=deploy)
        self.cfg = cfg
        for name in self.OPTIONS:  # resolved values, e.g. heads=None -> 2
            setattr(self, name, getattr(cfg, name))
        self._build()

    def _build(self) -> None:
        self.attn = AttentionBranch(self.in_chs, self.out_chs, self.stride, self.cfg, last_bias=self.deploy)
        if not self.deploy:
            self.bn = nn.BatchNorm2d(self.out_chs)

    def forward(self, x: Tensor) -> Tensor:
        return self.attn(x) if self.deploy else self.bn(self.attn(x))

    def deploy_state_dict(self) -> dict[str, Tensor]:
        g, c = bn_affine(self.bn)
        state = {f"attn.{k}": v for k, v in self.attn.state_dict(keep_vars=True).items()}
        return fold_bn_into_branch(state, "attn", self.cfg.stack, self.out_chs, g, c)


class SelfAttention(_AttentionOp):
    """`sa`: global multi-head self-attention (queries on the stride grid), then BatchNorm."""

    OPTIONS: ClassVar[dict[str, Any]] = {"heads": None}

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, heads: int | None = None,
                 deploy: bool = False) -> None:
        super().__init__(in_chs, out_chs, stride, attention_config("sa", out_chs, heads), deploy)


class PixelShiftSelfAttention(_AttentionOp):
    """`pssa`: Pixel Shift Self-Attention over the taps T(L, dirs), `stack` layers, then BatchNorm."""

    OPTIONS: ClassVar[dict[str, Any]] = {"heads": None, "shift": 1, "dirs": 8, "stack": 1}

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, heads: int | None = None,
                 shift: int = 1, dirs: int = 8, stack: int = 1, deploy: bool = False) -> None:
        cfg = attention_config("pssa", out_chs, heads, shift, dirs, stack)
        super().__init__(in_chs, out_chs, stride, cfg, deploy)
