"""`reparameterize`: convert every operator of any module to its deploy form."""

from __future__ import annotations

import copy

from torch import nn

from xvol_lab.ops.base import ReparamOp


def reparameterize(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Deploy form of `model`: every ReparamOp folded (BatchNorms into weights, branches merged).

    Exact for the model's eval-mode function. With ``inplace=False`` the model is left untouched.
    """
    model = model if inplace else copy.deepcopy(model)
    for module in model.modules():
        if isinstance(module, ReparamOp):
            module.switch_to_deploy()
    return model
