"""A weight-sharing supernet (single-path one-shot, SPOS) over the stage operators of a search space.

`Supernet(network, base, candidates)` turns a task's network built from the base `BackboneSpec`
(a classifier, a Semantic FPN, a detector: whatever holds a `Backbone`) into a supernet in place:
every operator position of stage i (``layer<i>.<j>.op1`` / ``op2``) becomes a `ChoiceOp` holding one
instance of every candidate operator of that stage, each with its own BatchNorms; the stem, the
shortcut projections and the heads stay shared. A path is an ordinary `BackboneSpec` that differs
from the base only in its stages; `set_path` makes the network compute it, `extract` gives the
state_dict of the stand-alone network of that spec (`build_classifier(path, ...)` loads it
strictly, and `init.path` takes it as a state dict file).

Weight sharing. The instance a stage option selects is keyed by the operator and the options that
shape or give meaning to its weights: kernel_size (the conv shape), stack (the number of q/k/v
layers) and heads (how the projection's channels are grouped into heads). Shift L and dirs are
*options of one instance*: they only choose which neighbours T(L, dirs) a query attends to, and
the q/k/v 1x1 projections apply unchanged to any set of taps, so ``pssa(L=1)`` and ``pssa(L=3)``
share weights (`xvol_lab.ops.attention_branch.set_taps`). Their BatchNorm statistics differ by
L; a path's statistics are recalibrated before it is scored (`recalibrate_bn`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from xvol_lab.models.backbone import Backbone, init_weights
from xvol_lab.models.spec import BackboneSpec, StageSpec
from xvol_lab.ops import ReparamOp, create_op
from xvol_lab.ops.attention_branch import set_taps

# Options computed by one shared instance (see the module docstring).
SHARED_OPTIONS = ("shift", "dirs")


def candidate_key(stage: StageSpec) -> str:
    """The `ChoiceOp` key of the instance that computes `stage`: ``pssa``, ``xvol_pssa__kernel_size-5``."""
    defaults = StageSpec(op=stage.op).op_kwargs()
    opts = [f"{k}-{v}" for k, v in stage.op_kwargs().items() if k not in SHARED_OPTIONS and v != defaults.get(k)]
    return "__".join([stage.op, *opts])


class ChoiceOp(nn.Module):
    """One operator position of the supernet: ``choices[active](x)``."""

    def __init__(self, choices: dict[str, nn.Module]) -> None:
        super().__init__()
        self.choices = nn.ModuleDict(choices)
        self.active = next(iter(choices))

    def forward(self, x: Tensor) -> Tensor:
        return self.choices[self.active](x)


def _backbone(network: nn.Module) -> Backbone:
    found = [m for m in network.modules() if isinstance(m, Backbone)]
    if len(found) != 1:
        raise TypeError(f"{type(network).__name__}: expected one Backbone, found {len(found)}")
    return found[0]


class Supernet(nn.Module):
    """`network` (built from `base`) with every stage-i operator replaced by a `ChoiceOp` over the
    stage specs `candidates[i]` (module docstring). Forward runs the path last set by `set_path`."""

    def __init__(self, network: nn.Module, base: BackboneSpec, candidates: Sequence[Iterable[StageSpec]]) -> None:
        super().__init__()
        if len(candidates) != 4:
            raise ValueError(f"candidates: got {len(candidates)} stages, expected 4")
        self.network, self.base = network, base
        self.keys: list[list[str]] = []
        backbone = _backbone(network)
        stage_of: dict[int, int] = {}  # id(ChoiceOp) -> stage index 0..3
        for i, stage_candidates in enumerate(candidates):
            specs = {candidate_key(s): s for s in [base.stages[i], *stage_candidates]}
            self.keys.append(list(specs))
            for block in getattr(backbone, f"layer{i + 1}"):
                for name, child in list(block.named_children()):
                    if isinstance(child, ReparamOp):
                        ops = {k: create_op(s.op, child.in_chs, child.out_chs, child.stride, **s.op_kwargs())
                               for k, s in specs.items()}
                        for op in ops.values():
                            init_weights(op)
                        choice = ChoiceOp(ops)
                        stage_of[id(choice)] = i
                        setattr(block, name, choice)
        self.choice_ops: list[tuple[int, str, ChoiceOp]] = [
            (stage_of[id(m)], name, m) for name, m in network.named_modules() if isinstance(m, ChoiceOp)]
        self.path = base
        self.set_path(base)

    def check_path(self, path: BackboneSpec) -> None:
        """ValueError unless `path` is the base spec with candidate operators in its stages."""
        if dataclasses.replace(path, stages=self.base.stages) != self.base:
            raise ValueError(f"path {path.describe()}: expected the supernet's network {self.base.describe()} "
                             "with other stage operators only")
        for i, stage in enumerate(path.stages):
            if candidate_key(stage) not in self.keys[i]:
                raise ValueError(f"path.stages.{i}: {stage.describe()} is not a candidate of stage {i + 1}; "
                                 f"expected one of {', '.join(self.keys[i])}")

    def set_path(self, path: BackboneSpec) -> None:
        """Make the forward compute `path` (shift and dirs set on the shared PSSA instances)."""
        self.check_path(path)
        for i, _, choice in self.choice_ops:
            stage = path.stages[i]
            choice.active = candidate_key(stage)
            if "shift" in stage.op_kwargs():
                set_taps(choice.choices[choice.active], stage.shift, stage.dirs)
        self.path = path

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.network(*args, **kwargs)

    def extract(self, path: BackboneSpec) -> tuple[BackboneSpec, dict[str, Tensor]]:
        """`path` and the state_dict (detached copies) of the stand-alone network built from it."""
        self.check_path(path)
        prefixes = {f"{name}.choices.{candidate_key(path.stages[i])}.": f"{name}."
                    for i, name, _ in self.choice_ops}
        state: dict[str, Tensor] = {}
        for key, value in self.network.state_dict().items():
            if ".choices." not in key:
                state[key] = value.detach().clone()
                continue
            for old, new in prefixes.items():
                if key.startswith(old):
                    state[new + key[len(old):]] = value.detach().clone()
        return path, state


BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


@contextmanager
def _train_mode(module: nn.Module):  # type: ignore[no-untyped-def]
    training = module.training
    module.train()
    try:
        yield
    finally:
        module.train(training)


@torch.no_grad()
def recalibrate_bn(network: nn.Module, batches: Iterable[Any]) -> int:
    """Reset every BatchNorm's running statistics and re-estimate them as plain averages over the
    forward passes of `batches` (each passed as ``network(batch)``); parameters are untouched.
    Returns the number of batches used. Used on a supernet path before scoring it (SPOS)."""
    norms = [m for m in network.modules() if isinstance(m, _NORMS)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
    count = 0
    try:
        with _train_mode(network):
            for batch in batches:
                network(batch)
                count += 1
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
    return count


__all__ = ["BN_BUFFERS", "ChoiceOp", "Supernet", "candidate_key", "recalibrate_bn"]
