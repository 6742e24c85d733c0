"""X-volution: y = BN_c(conv(x)) + BN_a(attn(x)); deploy form: one dynamic convolution.

Deploy (reference, "Re-parameterization"): the static kernel W~_c = g_c * W_c with the merged bias
b~_c + c_a, plus the content-dependent kernel sum_i a_i(p, t) W~_v,i whose basis W~_v = g_a * W_v sits
in the attention layer's W_v rows. It is evaluated without materialising K_p, by aggregating
v = W~_v x; `xvol_lab.ops.reference.dynamic_conv_reference` materialises K_p and must agree.
With stack > 1 the deploy form folds both BatchNorms and keeps the stack.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn

from xvol_lab.ops.attention_branch import AttentionBranch, AttentionConfig, fold_bn_into_branch
from xvol_lab.ops.attention_ops import attention_config
from xvol_lab.ops.base import ReparamOp
from xvol_lab.ops.bn_folding import bn_affine, fuse_conv_bn
from xvol_lab.ops.options import check_channels, check_kernel_size, check_stride


class _XVolution(ReparamOp):
    """Convolution branch + attention branch, each with BatchNorm, summed."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, kernel_size: int, cfg: AttentionConfig,
                 deploy: bool) -> None:
        check_channels(in_chs, out_chs)
        super().__init__(in_chs, out_chs, check_stride(stride), deploy=deploy)
        self.kernel_size = check_kernel_size(kernel_size)
        self.cfg = cfg
        for name in self.OPTIONS:
            if name != "kernel_size":
                setattr(self, name, getattr(cfg, name))
        self._build()

    def _build(self) -> None:
        k = self.kernel_size
        self.conv = nn.Conv2d(self.in_chs, self.out_chs, k, self.stride, k // 2, bias=self.deploy)
        self.attn = AttentionBranch(self.in_chs, self.out_chs, self.stride, self.cfg)
        if not self.deploy:
            self.bn_conv = nn.BatchNorm2d(self.out_chs)
            self.bn_attn = nn.BatchNorm2d(self.out_chs)

    def forward(self, x: Tensor) -> Tensor:
        if self.deploy:  # the static convolution, then the dynamic part accumulated into it
            return self.attn(x, out=self.conv(x))
        return self.bn_conv(self.conv(x)) + self.bn_attn(self.attn(x))

    def deploy_state_dict(self) -> dict[str, Tensor]:
        weight, bias_conv = fuse_conv_bn(self.conv.weight, self.bn_conv)
        g_attn, c_attn = bn_affine(self.bn_attn)
        state = {f"attn.{k}": v for k, v in self.attn.state_dict(keep_vars=True).items()}
        state = fold_bn_into_branch(state, "attn", self.cfg.stack, self.out_chs, g_attn)
        return {**state, "conv.weight": weight, "conv.bias": bias_conv + c_attn}


class XVolutionSA(_XVolution):
    """`xvol_sa`: X-volution with global self-attention."""

    OPTIONS: ClassVar[dict[str, Any]] = {"kernel_size": 3, "heads": None}

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, kernel_size: int = 3,
                 heads: int | None = None, deploy: bool = False) -> None:
        super().__init__(in_chs, out_chs, stride, kernel_size, attention_config("sa", out_chs, heads), deploy)


class XVolutionPSSA(_XVolution):
    """`xvol_pssa`: X-volution with Pixel Shift Self-Attention."""

    OPTIONS: ClassVar[dict[str, Any]] = {"kernel_size": 3, "heads": None, "shift": 1, "dirs": 8, "stack": 1}

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, kernel_size: int = 3,
                 heads: int | None = None, shift: int = 1, dirs: int = 8, stack: int = 1,
                 deploy: bool = False) -> None:
        cfg = attention_config("pssa", out_chs, heads, shift, dirs, stack)
        super().__init__(in_chs, out_chs, stride, kernel_size, cfg, deploy)
