"""Preemption mid-epoch: the training order is a function of (seed, epoch), split among processes;
SIGTERM during a batch writes last.ckpt at once, and the resumed run ends exactly as an
uninterrupted one (weights, val and train metrics)."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from _helpers import Preempt
from lightning.pytorch.utilities.exceptions import SIGTERMException

from xvol_lab.data.sampler import EpochSampler, ResumableLoader
from xvol_lab.errors import ConfigError
from xvol_lab.schema import with_overrides
from xvol_lab.tasks import fit
from xvol_lab.tasks.callbacks import PreemptionCheckpoint
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.metrics import VAL_ACC1
from xvol_lab.tasks.resume import resumed_config
from xvol_lab.tasks.runner import build_trainer

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

STEPS_PER_EPOCH = 192 // 32


def test_epoch_order_depends_on_seed_and_epoch_only_and_processes_split_it():
    a, b = EpochSampler(10, seed=3), EpochSampler(10, seed=3)
    torch.manual_seed(123)  # the global random state plays no part
    first = list(a)
    assert sorted(first) == list(range(10)) and list(b) == first
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(10))
    assert list(EpochSampler(10, seed=4)) != first
    # 3 processes: each a third of the permutation cut to 9, disjoint, in the permutation's order
    parts = [EpochSampler(10, seed=3, rank=r, world=3) for r in range(3)]
    assert [len(p) for p in parts] == [3, 3, 3]
    chunks = [list(p) for p in parts]
    assert [i for trio in zip(*chunks, strict=True) for i in trio] == first[:9]


def test_loader_state_skips_the_batches_already_trained_on():
    data = torch.arange(20)
    loader = ResumableLoader(data, EpochSampler(20, seed=0), batch_size=4, drop_last=True)
    loader.sampler.set_epoch(2)
    full = [b.tolist() for b in loader]
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state == {"epoch": 2, "batches": 2}
    fresh = ResumableLoader(data, EpochSampler(20, seed=0), batch_size=4, drop_last=True)
    fresh.load_state_dict(state)
    assert len(fresh) == 5  # the epoch's length, for Lightning's count
    assert [b.tolist() for b in fresh] == full[2:]
    assert fresh.state_dict() == {"epoch": 2, "batches": 5}
    fresh.sampler.set_epoch(3)  # the next epoch starts at its first batch
    assert len([b for b in fresh]) == 5


@pytest.mark.slow
def test_sigterm_mid_epoch_checkpoints_at_once_and_the_resumed_run_ends_as_an_uninterrupted_one(tmp_path: Path):
    config = load_run_config(None, [
        f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.num_classes=4", "data.num_train=192",
        "data.num_val=64", "data.batch_size=32", "data.num_workers=0", "model.width_mult=0.125",
        "model.stage3.op=xvol_pssa", "optim.name=sgd", "optim.lr=0.05", "trainer.accelerator=cpu",
        "trainer.max_epochs=2", "trainer.log_every_n_steps=1"])
    straight = fit(config, tmp_path / "straight", progress=False)
    stop = STEPS_PER_EPOCH + 2  # the third step of the second epoch
    with pytest.raises(SIGTERMException):
        fit(config, tmp_path / "run", callbacks=[Preempt(stop)], progress=False)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=False)["global_step"] == stop  # not the epoch end
    assert not list(last.parent.glob(".*"))  # no temporary file left
    resumed = fit(config, tmp_path / "run", progress=False, resume="last")
    assert resumed == straight  # val and train metrics, exactly
    weights = [torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
               for d in (tmp_path / "straight", tmp_path / "run")]
    assert weights[0].keys() == weights[1].keys()
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name



class _Worsening(L.LightningModule):
    """A model whose validation accuracy falls every epoch: only the first epoch is the best."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch[0]).square().mean()

    def validation_step(self, batch, batch_idx) -> None:
        self.log(VAL_ACC1, 1.0 - 0.1 * self.current_epoch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=2)

    val_dataloader = train_dataloader


def test_last_checkpoint_is_the_latest_epoch_even_when_the_monitor_did_not_improve(tmp_path: Path):
    """The run's checkpoint callbacks: best.ckpt stays at the first epoch (the monitor only fell), while
    last.ckpt, what a resume restarts from, holds the final one (Lightning's save_last would not)."""
    config = load_run_config(None, [f"data.root={tmp_path / 'data'}", "trainer.accelerator=cpu",
                                    "trainer.max_epochs=3"])
    trainer = build_trainer(config, tmp_path / "run", progress=False)
    trainer.fit(_Worsening())
    ckpts = {name: torch.load(tmp_path / "run" / "checkpoints" / f"{name}.ckpt", map_location="cpu",
                              weights_only=False) for name in ("best", "last")}
    assert (ckpts["best"]["epoch"], ckpts["best"]["global_step"]) == (0, 2)
    assert (ckpts["last"]["epoch"], ckpts["last"]["global_step"]) == (2, 6)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_a_resume_may_change_the_devices_only_from_an_epoch_end_checkpoint(tmp_path: Path):
    stored = load_run_config(None, ["optim.lr=0.05"])
    more = with_overrides(stored, ["trainer.max_epochs=9", "trainer.devices=2", "trainer.strategy=ddp"])
    epoch_end, mid_epoch = tmp_path / "epoch_end.ckpt", tmp_path / "mid_epoch.ckpt"
    torch.save({"global_step": 6}, epoch_end)
    torch.save({"global_step": 8, PreemptionCheckpoint.STATE_KEY: {}}, mid_epoch)
    assert resumed_config(stored, more, epoch_end, tmp_path) == more
    with pytest.raises(ConfigError) as err:
        resumed_config(stored, more, mid_epoch, tmp_path)
    lines = str(err.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == ["trainer.devices", "trainer.strategy"]  # not max_epochs
    assert lines[0].startswith(f"--resume {mid_epoch}: trainer.devices: stored 1 ({tmp_path / 'config.yaml'}), "
                               "given 2; ")
    assert resumed_config(stored, with_overrides(stored, ["trainer.max_epochs=9"]), mid_epoch, tmp_path).trainer \
        .max_epochs == 9


def test_fit_resumes_only_the_config_its_run_folder_holds(tmp_path: Path):
    config = load_run_config(None, [
        f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.num_classes=4", "data.num_train=32",
        "data.num_val=16", "data.batch_size=16", "data.num_workers=0", "model.width_mult=0.125",
        "trainer.accelerator=cpu", "trainer.max_epochs=1"])
    run_dir = tmp_path / "run"
    fit(config, run_dir, progress=False)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"model.stage3.op: stored 'conv' .*, given 'sa'; "):
        fit(with_overrides(config, ["model.stage3.op=sa"]), run_dir, progress=False, resume="last")
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
