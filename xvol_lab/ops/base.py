"""Base class of every operator: one constructor shape, a train form and a deploy form."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor, nn


class ReparamOp(nn.Module):
    """An operator ``(in_chs, out_chs, stride=1, *, deploy=False, **opts)``.

    Subclasses build their submodules in `_build()` for the current ``self.deploy`` and compute the
    deploy form's tensors from the train form in `deploy_state_dict()` (pure, differentiable).
    `switch_to_deploy()` is a thin idempotent mutator on top; ``deploy=True`` builds the deploy form
    directly, so a deploy state_dict loads into a freshly constructed model.
    """

    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, *, deploy: bool = False) -> None:
        super().__init__()
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, stride
        self.deploy = deploy

    def _build(self) -> None:
        raise NotImplementedError

    def deploy_state_dict(self) -> dict[str, Tensor]:
        """The deploy form's state_dict, computed from the train form (BatchNorm in eval statistics)."""
        raise NotImplementedError

    def switch_to_deploy(self) -> None:
        """Convert this op in place to its deploy form; a no-op when already deployed."""
        if self.deploy:
            return
        state = self.deploy_state_dict()
        ref = next(iter(state.values()))
        training = self.training
        for name in list(self._modules):
            delattr(self, name)
        for name in list(self._parameters):
            delattr(self, name)
        self.deploy = True
        self._build()
        self.to(device=ref.device, dtype=ref.dtype)
        self.load_state_dict({k: v.detach() for k, v in state.items()})
        self.train(training)

    def extra_repr(self) -> str:
        opts = ", ".join(f"{k}={getattr(self, k)}" for k in self.OPTIONS)
        return f"{self.in_chs}, {self.out_chs}, stride={self.stride}" + (f", {opts}" if opts else "") + (
            ", deploy=True" if self.deploy else "")
