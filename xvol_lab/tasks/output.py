"""What a training run prints and logs, for a person to read.

- Lightning's boilerplate lines and the dependencies' deprecation warnings are filtered
  (`xvol_lab.quiet.quiet_lightning`, called by `lab.py` and by `build_trainer`).
- Epochs are counted from 1 everywhere: the progress bar (`xvol_lab.tasks.callbacks.ProgressBar`),
  the log lines, ``best_epoch``, and the ``epoch`` column of metrics.csv and TensorBoard
  (`OneBasedEpochs`; Lightning counts from 0).
- `FlopsSummary`: the model summary with the lab's FLOPs (`xvol_lab.models.cost.count_flops`) in
  place of Lightning's, which are 0 without an ``example_input_array``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from torch import nn

from xvol_lab.models.cost import count_flops


class OneBasedEpochs:
    """A Lightning logger mixin: the ``epoch`` it writes counted from 1 (Lightning's from 0)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        super().log_metrics(metrics, step)  # type: ignore[misc]


class EpochCSVLogger(OneBasedEpochs, CSVLogger):
    """`CSVLogger` whose ``epoch`` column counts from 1."""


class EpochTensorBoardLogger(OneBasedEpochs, TensorBoardLogger):
    """`TensorBoardLogger` whose ``epoch`` scalar counts from 1."""


def example_input(network: nn.Module, channels: int, size: int, image_lists: bool) -> Any:
    """One zero image as `network` takes it: a batch (1, C, S, S), or a list of one (C, S, S) image."""
    param = next(network.parameters())
    image = torch.zeros(channels, size, size, device=param.device, dtype=param.dtype)
    return [image] if image_lists else image[None]


class FlopsSummary(RichModelSummary):
    """Lightning's rich model summary, its FLOPs being `flops`: the lab's count of one image through the
    training network (forward, 2 per multiply-add; `xvol_lab.models.cost.count_flops`)."""

    def __init__(self, flops: int) -> None:
        super().__init__(max_depth=1)
        self.flops = flops

    @classmethod
    def of(cls, network: nn.Module, inputs: Any) -> FlopsSummary:
        """The summary of `network`, counted on `inputs` (`example_input`)."""
        return cls(count_flops(network, inputs))

    def summarize(self, summary_data: list[tuple[str, list[str]]], total_parameters: int,  # type: ignore[override]
                  trainable_parameters: int, model_size: float, total_training_modes: dict[str, int],
                  total_flops: int, **summarize_kwargs: Any) -> None:
        names = dict(summary_data).get("Name", [])
        shown = get_human_readable_count(self.flops)
        data = [(column, [shown if column == "FLOPs" and name == "model" else value
                          for name, value in zip(names, values, strict=True)] if column == "FLOPs" else values)
                for column, values in summary_data]
        RichModelSummary.summarize(data, total_parameters, trainable_parameters, model_size, total_training_modes,
                                   self.flops, **summarize_kwargs)


__all__ = ["EpochCSVLogger", "EpochTensorBoardLogger", "FlopsSummary", "OneBasedEpochs", "example_input"]
