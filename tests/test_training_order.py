"""The training order's own seed (`RunConfig.order_seed`): it fixes the order of the training batches
and nothing else, so two runs can share their order and differ in initialisation (the negative
control's pairing, `xvol_lab.study.controls`)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch

from xvol_lab.tasks import fit
from xvol_lab.tasks.config import RunConfig, load_run_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class Record(L.Callback):
    """The initial weights of the first layer and the labels of every training batch."""

    def __init__(self) -> None:
        self.first: torch.Tensor | None = None
        self.labels: list[list[int]] = []

    def on_train_start(self, trainer, pl_module) -> None:
        self.first = next(pl_module.parameters()).detach().clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.labels.append(batch[1].tolist())


def record(tmp_path: Path, name: str, seed: int, order_seed: int | None) -> Record:
    config = load_run_config(None, [
        f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.num_classes=4", "data.num_train=64",
        "data.num_val=16", "data.batch_size=16", "data.num_workers=0", "model.width_mult=0.125",
        "trainer.accelerator=cpu", "trainer.max_epochs=2", f"seed={seed}",
        f"order_seed={'null' if order_seed is None else order_seed}"])
    callback = Record()
    fit(config, tmp_path / name, callbacks=[callback], progress=False)
    return callback


def test_order_seed_fixes_the_batches_and_seed_the_initialisation(tmp_path: Path):
    own = record(tmp_path, "own", seed=0, order_seed=None)
    shared = record(tmp_path, "shared", seed=1, order_seed=0)  # another init, seed 0's order
    other = record(tmp_path, "other", seed=0, order_seed=1)  # seed 0's init, another order
    assert len(own.labels) == 8  # 2 epochs of 4 batches
    assert shared.labels == own.labels
    assert other.labels != own.labels
    assert torch.equal(other.first, own.first)
    assert not torch.equal(shared.first, own.first)


def test_training_order_seed_defaults_to_the_seed_and_bad_seeds_name_the_key():
    assert RunConfig(seed=7).training_order_seed == 7
    assert RunConfig(seed=7, order_seed=3).training_order_seed == 3
    with pytest.raises(ValueError, match=r"^order_seed: got -1, expected an integer from 0 to 4294967295$"):
        RunConfig(order_seed=-1)
    with pytest.raises(ValueError, match=r"^seed: got 4294967296, expected an integer from 0 to 4294967295$"):
        RunConfig(seed=2**32)
