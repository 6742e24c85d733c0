"""What a run prints: Lightning's boilerplate filtered, the model summary with the lab's FLOPs, and
epochs counted from 1 in the progress bar, the log lines and metrics.csv."""

from __future__ import annotations

import csv
import logging
import warnings

import pytest
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from xvol_lab.models import build_classifier
from xvol_lab.models.cost import count_flops
from xvol_lab.quiet import BoilerplateFilter, quiet_lightning
from xvol_lab.tasks.config import load_run_config

BOILERPLATE = ["GPU available", "TPU available", "litlogger", "Tip:", "was configured so", "srun",
               "LeafSpec", "DeprecationWarning", "FutureWarning", "stepping batches", "Total FLOPs: 0 "]


def record(message: str) -> logging.LogRecord:
    return logging.LogRecord("lightning.pytorch.utilities.rank_zero", logging.INFO, __file__, 1, message, None, None)


@pytest.mark.parametrize("message, kept", [
    ("GPU available: False, used: False", False),
    ("TPU available: False, using: 0 TPU cores", False),
    ("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger](https://x)", False),
    ("`Trainer(limit_train_batches=1)` was configured so 1 batch per epoch will be used.", False),
    ("Loading `train_dataloader` to estimate number of stepping batches.", False),
    ("`Trainer.fit` stopped: `max_time=00:00:01:00` reached.", True),  # says why the run ended
    ("The number of training batches (1) is smaller than the logging interval", True),
])
def test_boilerplate_filter(message, kept):
    assert BoilerplateFilter().filter(record(message)) is kept


def test_dependencies_deprecations_are_filtered_the_labs_own_are_not():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()
        for module in ("lightning.pytorch.utilities._pytree", "torch.onnx", "xvol_lab.tasks.runner"):
            warnings.warn_explicit("`old` is deprecated", FutureWarning, "x.py", 1, module=module)
        warnings.warn_explicit("The `srun` command is available on your system but is not used. HINT: ...",
                               UserWarning, "slurm.py", 204, module="lightning.fabric.plugins.environments.slurm")
        warnings.warn_explicit("something the user must see", UserWarning, "x.py", 1, module="lightning.pytorch")
    assert [str(w.message) for w in caught] == ["`old` is deprecated", "something the user must see"]
    assert caught[0].filename == "x.py"  # the lab's own deprecated call


def test_train_output_is_readable_and_counts_epochs_from_1(run_lab, tmp_path):
    done = run_lab("train", "--run-dir", "run", "--max-epochs", "2", "--set", f"data.root={tmp_path / 'data'}",
                   "data.image_size=16", "data.num_classes=4", "data.num_train=32", "data.num_val=16",
                   "data.batch_size=16", "data.num_workers=0", "model.width_mult=0.125", "trainer.accelerator=cpu",
                   "trainer.limit_train_batches=1", "trainer.log_every_n_steps=1")
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout + done.stderr
    assert [line for line in BOILERPLATE if line in text] == []
    config = load_run_config(tmp_path / "run" / "config.yaml")
    flops = count_flops(build_classifier(config.model, 4), (1, 3, 16, 16))
    assert f"Total FLOPs: {get_human_readable_count(flops)}" in text and flops > 0
    assert "Epoch 2/2" in text and "Epoch 0/" not in text and "Epoch 1/1" not in text
    assert "at epoch 1 of 2" in text or "at epoch 2 of 2" in text  # the log line: best epoch of epochs
    with (tmp_path / "run" / "metrics.csv").open(newline="") as f:
        epochs = {int(r["epoch"]) for r in csv.DictReader(f) if r["epoch"]}
    assert epochs == {1, 2}
