"""Counting the tensors a step builds from host data: on CUDA each is a blocking host-to-device copy
(a stream sync, and a CUDA-graph capture error)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostTensorCount(TorchDispatchMode):
    """Counts, while active, the tensors made from Python data (``torch.tensor``, ``torch.as_tensor`` of
    lists: ``aten.lift_fresh``) and the copies of CPU tensors to another device."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if name == "aten.lift_fresh":
            self.calls.append(name)
        elif name in ("aten._to_copy", "aten.copy_"):
            src = args[1] if name == "aten.copy_" else args[0]
            dst = kwargs.get("device") if name == "aten._to_copy" else args[0].device
            if isinstance(src, torch.Tensor) and src.device.type == "cpu" and dst is not None \
                    and torch.device(dst).type != "cpu":
                self.calls.append(f"{name} cpu->{dst}")
        return func(*args, **kwargs)
