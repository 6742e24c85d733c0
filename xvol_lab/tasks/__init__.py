"""Lightning tasks and the training runner: `fit(RunConfig, run_dir)` trains one model."""

from xvol_lab.tasks.classification import ClassificationTask
from xvol_lab.tasks.errors import NonFiniteLossError
from xvol_lab.tasks.export import export_deploy, load_deploy
from xvol_lab.tasks.metrics import MONITOR, TRAIN_ACC1, TRAIN_LOSS, VAL_ACC1, VAL_ACC5, VAL_LOSS
from xvol_lab.tasks.runner import fit

__all__ = ["MONITOR", "TRAIN_ACC1", "TRAIN_LOSS", "VAL_ACC1", "VAL_ACC5", "VAL_LOSS", "ClassificationTask",
           "NonFiniteLossError", "export_deploy", "fit", "load_deploy"]
