"""What a training run prints and logs, for a person to read.

- `quiet_lightning`: Lightning's boilerplate is filtered: the hardware lines ("GPU available", "TPU
  available"), the logger tips ("litlogger"), the notice that a ``limit_*_batches`` /
  ``val_check_interval`` setting is used, the stepping-batches notice, the srun hint, and the
  deprecation warnings (DeprecationWarning, FutureWarning) that dependencies raise from their own
  code (a deprecated call in the lab's code still warns). Public APIs only: a `logging.Filter` on
  Lightning's rank-zero loggers and `warnings.filterwarnings`.
- Epochs are counted from 1 everywhere: the progress bar (`xvol_lab.tasks.callbacks.ProgressBar`),
  the log lines, ``best_epoch``, and the ``epoch`` column of metrics.csv and TensorBoard
  (`OneBasedEpochs`; Lightning counts from 0).
- `FlopsSummary`: the model summary with the lab's FLOPs (`xvol_lab.models.cost.count_flops`) in
  place of Lightning's, which are 0 without an ``example_input_array``.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities.model_summary import get_human_readable_count
from torch import nn

from xvol_lab.models.cost import count_flops

# Lightning's rank-zero info lines that say nothing about the run.
BOILERPLATE = re.compile(r"(GPU|TPU|HPU|IPU) available: |💡 Tip: |.*\blitlogger\b|"
                         r"`Trainer\((limit_\w+|val_check_interval|overfit_batches)=.*` was configured so|"
                         r"Loading `\w+_dataloader` to estimate number of stepping batches|"
                         r"Trainer already configured with model summary callbacks")
LIGHTNING_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
# Packages whose own deprecation warnings the lab's users cannot act on.
DEPENDENCIES = r"(lightning|lightning_fabric|lightning_utilities|torch|torchvision|torchmetrics|onnx|onnxscript|" \
               r"onnxruntime|optuna|tensorboard|google\.protobuf)(\.|$)"
SRUN_HINT = r"The `srun` command is available on your system but is not used"


class BoilerplateFilter(logging.Filter):
    """Drops the records whose message is `BOILERPLATE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not BOILERPLATE.match(record.getMessage())


def quiet_lightning() -> None:
    """Filter Lightning's boilerplate lines and the dependencies' deprecation warnings (module doc);
    idempotent."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, BoilerplateFilter) for f in logger.filters):
            logger.addFilter(BoilerplateFilter())
    warnings.filterwarnings("ignore", message=SRUN_HINT)
    for category in (DeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category, module=DEPENDENCIES)


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


__all__ = ["EpochCSVLogger", "EpochTensorBoardLogger", "FlopsSummary", "OneBasedEpochs", "example_input",
           "quiet_lightning"]
