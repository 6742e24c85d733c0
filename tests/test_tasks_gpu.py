"""What only a GPU can check (marked `gpu`, skipped without CUDA): a bf16-mixed training run of each
task with X-volution(PSSA) in stage 3 and X-volution(SA) in stage 4 (the Triton kernels, fused SDPA),
with the settings that misbehave only on CUDA (deterministic algorithms, channels-last, pinned
uint8 batches from sized worker pools); and, with two GPUs, on the same operators, NCCL DDP classification (metrics over
the whole validation set) and detection validation (SyncBatchNorm on by default)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _helpers import detector_overrides

from xvol_lab.data import build_datamodule
from xvol_lab.tasks import VAL_ACC1, VAL_LOSS, fit
from xvol_lab.tasks.classification import ClassificationTask
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.metrics import TRAIN_LOSS
from xvol_lab.tasks.registry import MONITOR

REPO = Path(__file__).resolve().parents[1]
GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(GPUS < 1, reason="needs CUDA")
needs_two = pytest.mark.skipif(GPUS < 2, reason="needs 2 CUDA devices")

DETECTOR = detector_overrides()
TASKS = {
    "classification": ["data.name=shapes", "data.image_size=32", "data.num_classes=4"],
    "semantic_segmentation": ["data.name=shapes-seg", "data.image_size=32", "data.num_classes=4"],
    "detection": ["data.name=shapes-coco", "data.image_size=64", "data.num_classes=3", *DETECTOR],
    "instance_segmentation": ["data.name=shapes-coco", "data.image_size=64", "data.num_classes=3", *DETECTOR],
}


GPU_OPS = ["model.stage3.op=xvol_pssa", "model.stage4.op=xvol_sa"]  # the Triton kernels and fused SDPA


def overrides(task: str, root: Path) -> list[str]:
    return [f"task={task}", *TASKS[task], f"data.root={root}", "data.num_train=32", "data.num_val=9",
            "data.batch_size=8", "model.width_mult=0.125", "trainer.max_epochs=1"]


@needs_cuda
@pytest.mark.parametrize("task", list(TASKS))
def test_bf16_mixed_training_run_on_cuda(tmp_path, task):
    config = load_run_config(None, [*overrides(task, tmp_path / "data"), *GPU_OPS, "trainer.accelerator=cuda",
                                    "trainer.devices=1", "trainer.precision=bf16-mixed",
                                    "trainer.deterministic=true", "trainer.channels_last=true",
                                    "trainer.log_every_n_steps=1"])
    result = fit(config, tmp_path / "run", progress=False)
    assert math.isfinite(result[TRAIN_LOSS]) and result["epochs"] == 1.0
    assert math.isfinite(result[MONITOR[task][0]])


def lab_train(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "lab.py"), "train", "--run-dir", str(tmp_path / "run"),
                           "--no-progress", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)


@needs_two
def test_nccl_ddp_classification_counts_every_validation_image_once(tmp_path):
    proc = lab_train(tmp_path, "--devices", "2", "--strategy", "ddp", "--max-epochs", "2",
                     *[f"--set={o}" for o in [*overrides("classification", tmp_path / "data"), *GPU_OPS]],
                     "--set=data.num_val=41", "--set=trainer.accelerator=cuda",
                     "--set=trainer.precision=bf16-mixed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr
    run_dir = tmp_path / "run"
    result = json.loads((run_dir / "results.json").read_text())
    task = ClassificationTask.load_from_checkpoint(run_dir / "checkpoints" / "best.ckpt", map_location="cpu")
    dm = build_datamodule(load_run_config(run_dir / "config.yaml").data)
    dm.setup("fit")
    images, labels = map(torch.cat, zip(*(dm.on_after_batch_transfer(b, 0) for b in dm.val_dataloader()),
                                        strict=True))
    assert len(labels) == 41
    with torch.no_grad():
        logits = task.eval()(images)
    assert result[VAL_ACC1] == pytest.approx((logits.argmax(1) == labels).float().mean().item(), abs=1e-6)
    assert result[VAL_LOSS] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=2e-2)  # bf16 run


@needs_two
def test_nccl_ddp_detection_validates_with_synced_batchnorm(tmp_path):
    """trainer.sync_batchnorm defaults to on here (dense task, 2 CUDA processes): SyncBatchNorm's
    NCCL all-reduces in training, then COCO validation gathered across the processes."""
    proc = lab_train(tmp_path, "--devices", "2", "--strategy", "ddp", "--max-epochs", "1",
                     *[f"--set={o}" for o in [*overrides("detection", tmp_path / "data"), *GPU_OPS]],
                     "--set=trainer.accelerator=cuda", "--set=trainer.precision=bf16-mixed")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stderr
    result = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0.0 <= result["val/box_ap"] <= 1.0 and math.isfinite(result[TRAIN_LOSS])
