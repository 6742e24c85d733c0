"""Two-process DDP on CPU (gloo) through `lab.py train`: the run completes, both processes join,
rank 0 writes one run directory, and the metrics are those of the whole validation set, every
image counted once (41 images: DistributedSampler would pad to 42 with a duplicate)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from xvol_lab.data import build_datamodule
from xvol_lab.tasks import VAL_ACC1, VAL_LOSS
from xvol_lab.tasks.classification import ClassificationTask
from xvol_lab.tasks.config import load_run_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_return_metrics(tmp_path):
    overrides = [f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.num_classes=4",
                 "data.num_train=64", "data.num_val=41", "data.batch_size=10", "data.num_workers=0",
                 "model.width_mult=0.125", "trainer.accelerator=cpu", "trainer.log_every_n_steps=1"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # no --run-dir: the worker process must reuse the timestamped directory that rank 0 chose
    proc = subprocess.run(
        [sys.executable, str(REPO / "lab.py"), "train", "--devices", "2", "--strategy", "ddp",
         "--max-epochs", "2", "--no-progress", *[f"--set={o}" for o in overrides]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr
    [run_dir] = (tmp_path / "runs" / "train").iterdir()
    assert proc.stdout.splitlines()[0] == f"run: {run_dir.relative_to(tmp_path)}"
    result = json.loads((run_dir / "results.json").read_text())
    assert result["epochs"] == 2.0 and result["best_epoch"] in (1.0, 2.0)

    # the synchronised metrics equal an evaluation of the best checkpoint on all 41 images, each once
    # (21 on one process in 3 batches, 20 on the other in 2: an unweighted mean would differ too)
    task = ClassificationTask.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    dm = build_datamodule(load_run_config(run_dir / "config.yaml").data)
    dm.setup("fit")
    batches = [dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()]
    images, labels = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    assert len(labels) == 41
    with torch.no_grad():
        logits = task.eval()(images)
    assert result[VAL_ACC1] == pytest.approx((logits.argmax(1) == labels).float().mean().item(), abs=1e-6)
    assert result[VAL_LOSS] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
