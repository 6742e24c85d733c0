"""Supernet training: the path of a step is the same on every DDP process (a function of seed and
step), and a supernet run stopped by SIGTERM and resumed ends exactly as an uninterrupted one."""

from __future__ import annotations

import dataclasses
import itertools
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from _helpers import Preempt, gloo_ranks
from lightning.pytorch.utilities.exceptions import SIGTERMException

from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.models.supernet import ChoiceOp
from xvol_lab.tasks import fit
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.supernet import SupernetTraining, path_index, product_path, stage_candidates

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

BASE = BackboneSpec(depths=(1, 1, 1, 1), width_mult=0.125, stem="small")
PATHS = [BASE, BASE.with_stage(3, op="pssa"), BASE.with_stage(3, op="pssa", shift=2),
         BASE.with_stage(3, op="sa"), BASE.with_stage(2, op="xvol_sa")]


def test_paths_are_uniform_and_depend_on_seed_and_step_only():
    torch.manual_seed(1)
    counts = Counter(path_index(7, step, 5) for step in range(5000))
    assert sorted(counts) == [0, 1, 2, 3, 4]
    assert all(abs(c - 1000) < 120 for c in counts.values())  # 4 binomial sd ~ 113
    torch.manual_seed(2)
    assert [path_index(7, s, 5) for s in range(50)] == [path_index(7, s, 5) for s in range(50)]
    assert [path_index(7, s, 5) for s in range(50)] != [path_index(8, s, 5) for s in range(50)]


def test_product_sampling_covers_every_combination_of_the_stages_candidates_evenly():
    callback = SupernetTraining(BASE, PATHS, seed=7, product=True)
    candidates = stage_candidates(PATHS)
    product = [dataclasses.replace(BASE, stages=stages) for stages in itertools.product(*candidates)]
    assert callback.count == len(product) == 8  # stage 2: conv, xvol_sa; stage 3: conv, pssa L=1, L=2, sa
    assert [product_path(BASE, candidates, i) for i in range(8)] == product  # without listing the product
    assert product[0] == BASE and len(set(product)) == 8 and set(PATHS) < set(product)
    taken = Counter(callback.path_at(step) for step in range(4000))
    assert set(taken) == set(product) and all(abs(c - 500) < 84 for c in taken.values())  # 4 binomial sd
    assert [callback.path_at(s) for s in range(50)] == [product[path_index(7, s, 8)] for s in range(50)]
    assert SupernetTraining(BASE, PATHS, seed=7).count == len(PATHS)  # the given paths only


def _steps_on_rank(rank: int) -> list[str]:
    """One DDP process: other global random states per rank, 30 training steps; each step's path,
    as set in the network, gathered from both processes."""
    torch.manual_seed(100 + rank)
    callback = SupernetTraining(BASE, PATHS, seed=3)
    module = SimpleNamespace(model=build_classifier(BASE, 2))
    callback.setup(None, module, "fit")
    seen = []
    for step in range(30):
        torch.rand(rank + 1)  # the processes' random streams diverge, as augmentation makes them
        callback.on_train_batch_start(SimpleNamespace(global_step=step), module, None, step)
        layer3 = [m for m in module.model.backbone.layer3.modules() if isinstance(m, ChoiceOp)]
        seen.append(f"{layer3[0].active}/{callback.supernet.path.describe()}")
    gathered: list[list[str] | None] = [None, None]
    dist.all_gather_object(gathered, seen)
    return gathered


def test_every_ddp_process_takes_the_same_path_in_a_step():
    by_rank = gloo_ranks(_steps_on_rank, timeout=120)
    assert by_rank[0] == by_rank[1]
    rank0, rank1 = by_rank[0]
    assert rank0 == rank1  # process 0's 30 paths are process 1's, step by step
    assert len(set(rank0)) == 5  # and they do change between steps


@pytest.mark.slow
def test_resumed_supernet_training_ends_as_an_uninterrupted_run(tmp_path: Path):
    config = load_run_config(None, [
        f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.num_classes=2", "data.num_train=96",
        "data.num_val=32", "data.batch_size=16", "data.num_workers=0", "model.width_mult=0.125",
        "model.depths=[1,1,1,1]", "model.stem=small", "optim.name=sgd", "optim.lr=0.05",
        "trainer.accelerator=cpu", "trainer.max_epochs=2", "trainer.log_every_n_steps=1"])
    base = config.model

    def callback() -> SupernetTraining:
        return SupernetTraining(base, [base, base.with_stage(3, op="pssa"), base.with_stage(3, op="sa"),
                                       base.with_stage(3, op="pssa", shift=2)], seed=config.seed)

    straight_cb = callback()
    straight = fit(config, tmp_path / "straight", callbacks=[straight_cb], progress=False)
    stop = 6 + 2  # the third step of the second epoch (6 steps per epoch)
    with pytest.raises(SIGTERMException):
        fit(config, tmp_path / "run", callbacks=[callback(), Preempt(stop)], progress=False)
    resumed_cb = callback()
    resumed = fit(config, tmp_path / "run", callbacks=[resumed_cb], progress=False, resume="last")
    assert resumed == straight
    assert resumed_cb.taken == straight_cb.taken[stop:]  # the steps after the checkpoint, same paths
    assert len({i for _, i in straight_cb.taken}) > 1
    weights = [torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
               for d in (tmp_path / "straight", tmp_path / "run")]
    assert weights[0].keys() == weights[1].keys()
    assert any(".choices.sa." in k for k in weights[0])  # every candidate is in the checkpoint
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
