"""Lightning's boilerplate kept out of the lab's output, with public APIs only (a `logging.Filter` on
Lightning's rank-zero loggers, `warnings.filterwarnings`): the hardware lines ("GPU available",
"TPU available"), the logger tips ("litlogger"), the notice that a ``limit_*_batches`` /
``val_check_interval`` setting is used, the stepping-batches and model-summary notices, the srun
hint, and the deprecation warnings (DeprecationWarning, FutureWarning) that dependencies raise from
their own code (a deprecated call in the lab's code still warns). Light: imports no dependency, so
`lab.py` calls it at start; `xvol_lab.tasks.runner.build_trainer` calls it too. `log_to_stderr`: the
lab's own log lines, one format for `lab.py` and the processes it starts.
"""

from __future__ import annotations

import logging
import re
import warnings


def log_to_stderr(level: int = logging.INFO) -> None:
    """Log the lab's lines (``INFO xvol_lab.study: ...``) to stderr at `level`."""
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


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


__all__ = ["BOILERPLATE", "BoilerplateFilter", "quiet_lightning"]
