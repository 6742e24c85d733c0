"""`fit`: one training run from a `RunConfig`, with its files under one run directory.

Layout of ``run_dir``::

    config.yaml        the RunConfig (written first; `load_run_config` reads it back); a resume
                       trains with it and never rewrites it (`xvol_lab.tasks.resume`)
    spec.json          the BackboneSpec alone (`lab.py train --arch` reads it)
    metrics.csv        every logged metric (CSVLogger), hparams.yaml
    tb/                TensorBoard events
    checkpoints/       best.ckpt (best epoch by the task's monitor) and last.ckpt (the latest epoch,
                       or the step a SIGTERM stopped)
    results.json       what `fit` returned (written at the end)
    fingerprint.json   the environment the run trained in (`xvol_lab.tasks.fingerprint`; written
                       when training ends, also when it fails)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

import lightning.pytorch as L
import torch
from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from xvol_lab.atomic import write_text
from xvol_lab.data import build_datamodule
from xvol_lab.errors import ConfigError
from xvol_lab.quiet import quiet_lightning
from xvol_lab.schema import to_dict
from xvol_lab.tasks.callbacks import EpochHistory, PreemptionCheckpoint, ProgressBar
from xvol_lab.tasks.cluster import cluster_plugins
from xvol_lab.tasks.config import RunConfig, dump_run_config
from xvol_lab.tasks.curve import LearningCurve
from xvol_lab.tasks.execution import cpu_threads, deterministic_mode, effective_optim, sync_batchnorm
from xvol_lab.tasks.fingerprint import FINGERPRINT_JSON, environment_fingerprint
from xvol_lab.tasks.output import EpochCSVLogger, EpochTensorBoardLogger, FlopsSummary, example_input
from xvol_lab.tasks.registry import task_record
from xvol_lab.tasks.resume import CONFIG_YAML, resumed_config, stored_config
from xvol_lab.tasks.stop import SynchronizedStop
from xvol_lab.tasks.transfer import init_backbone

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
METRICS_CSV = "metrics.csv"
RESULTS_JSON = "results.json"


def resolve_resume(run_dir: Path, resume: str | Path | None) -> Path | None:
    """The checkpoint to resume from: a path, or ``'last'`` for run_dir/checkpoints/last.ckpt."""
    if resume is None:
        return None
    path = run_dir / CHECKPOINT_DIR / "last.ckpt" if str(resume) == "last" else Path(resume)
    if not path.is_file():
        raise ConfigError(f"resume: {path}: no such checkpoint")
    return path


def _rows_before(path: Path, global_step: int) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of the CSV log `path` logged before optimiser step `global_step`."""
    if not path.is_file():
        return [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if r.get("step") and int(r["step"]) < global_step]
        return list(reader.fieldnames or []), rows


def _csv_logger(run_dir: Path, resume: Path | None) -> EpochCSVLogger:
    """A CSVLogger writing run_dir/metrics.csv (epochs counted from 1); on resume it keeps the rows logged
    before the checkpoint."""
    logger = EpochCSVLogger(run_dir, name="", version="")
    if rank_zero_only.rank != 0:
        return logger
    fieldnames: list[str] = []
    rows: list[dict[str, str]] = []
    if resume is not None:
        step = torch.load(resume, map_location="cpu", weights_only=True)["global_step"]
        fieldnames, rows = _rows_before(run_dir / METRICS_CSV, step)
    with warnings.catch_warnings():  # on resume it warns of deleting metrics.csv; the rows are kept below
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        writer = logger.experiment  # created now, before other files land in run_dir (else it warns)
    if rows:
        out = io.StringIO()
        table = csv.DictWriter(out, fieldnames=sorted(fieldnames))
        table.writeheader()
        table.writerows(rows)
        write_text(run_dir / METRICS_CSV, out.getvalue())
        writer.metrics_keys = sorted(fieldnames)  # new rows are appended under the same header
    return logger


def build_trainer(config: RunConfig, run_dir: Path, *, callbacks: Iterable[Callback] = (),
                  progress: bool = True, resume: Path | None = None) -> L.Trainer:
    """The Lightning Trainer of a run: checkpoints, CSV + TensorBoard logs, LR monitor, progress bar;
    `deterministic` and `sync_batchnorm` resolved for the hardware (`xvol_lab.tasks.execution`);
    Lightning's boilerplate output filtered (`xvol_lab.quiet`)."""
    quiet_lightning()
    record = task_record(config.task)
    monitor, mode = record.monitor, record.mode
    t = config.trainer
    extra: list[Callback] = [ProgressBar(t.log_every_n_steps)] if progress else []
    if t.curve_points:
        extra.append(LearningCurve(t.curve_points, t.curve_images))
    return L.Trainer(
        max_epochs=t.max_epochs, accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
        strategy=t.strategy, precision=t.precision, limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches, deterministic=deterministic_mode(t),
        sync_batchnorm=sync_batchnorm(config), accumulate_grad_batches=t.accumulate_grad_batches,
        log_every_n_steps=t.log_every_n_steps, gradient_clip_val=t.gradient_clip_val,
        check_val_every_n_epoch=t.check_val_every_n_epoch, default_root_dir=run_dir,
        logger=[_csv_logger(run_dir, resume),
                EpochTensorBoardLogger(run_dir, name="tb", version="", default_hp_metric=False)],
        callbacks=[
            ModelCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, filename="best", monitor=monitor, mode=mode,
                            save_top_k=1, auto_insert_metric_name=False, enable_version_counter=False),
            # last.ckpt after every epoch: Lightning's save_last=True copies only epochs that the monitor
            # saved, so an epoch without improvement would leave last.ckpt (and a resume) an epoch behind.
            ModelCheckpoint(dirpath=run_dir / CHECKPOINT_DIR, filename="last", save_top_k=1,
                            enable_version_counter=False),
            EpochHistory(monitor, mode), PreemptionCheckpoint(run_dir / CHECKPOINT_DIR / "last.ckpt"),
            SynchronizedStop(),
            LearningRateMonitor(logging_interval="step"), *extra, *callbacks],
        use_distributed_sampler=False,  # the training loaders split themselves (`xvol_lab.data.sampler`)
        enable_progress_bar=progress, enable_model_summary=progress,
        plugins=cluster_plugins(t.accelerator, t.devices),  # SLURMEnvironment under srun
        **t.extra,  # any other lightning.Trainer argument of the config (xvol_lab.tasks.trainer_args)
    )


def fit(config: RunConfig, run_dir: str | Path, *, callbacks: Iterable[Callback] = (), progress: bool = True,
        resume: str | Path | None = None) -> dict[str, float]:
    """Train `config` with its files under `run_dir`; returns the best epoch's metrics.

    The result holds the task's ``val/*`` metrics and the ``train/*`` epoch means of the best epoch
    (by the task's `TaskRecord.monitor`), ``best_epoch`` (counted from 1) and ``epochs`` (epochs trained),
    all floats. `resume` is a checkpoint path or ``'last'`` (run_dir/checkpoints/last.ckpt); where
    run_dir holds a config.yaml, that is the config, and `config` may differ from it only in what a
    resume may change (`xvol_lab.tasks.resume.resumed_config`; ConfigError otherwise).
    The learning rate is scaled to the global batch as `optim.lr_scaling` says; the network runs
    channels-last and/or compiled as `trainer.channels_last` and `trainer.compile` say, on
    `trainer.threads` CPU threads where set (the previous count is restored after).

    Multi-process runs (strategy 'ddp') execute the calling script once per process and every
    process returns the same dict (the metrics are synchronised across processes); only global
    rank 0 writes files. A diverging run raises `NonFiniteLossError` (on every process).
    """
    run_dir = Path(run_dir)
    resume_path = resolve_resume(run_dir, resume)
    stored = stored_config(run_dir) if resume_path is not None else None
    if stored is not None:  # the run's own config; only what a resume may change is taken from `config`
        config = resumed_config(stored, config, resume_path, run_dir)
    with cpu_threads(config.trainer.threads):
        return _train(config, run_dir, callbacks=callbacks, progress=progress, resume_path=resume_path,
                      resumed=stored is not None)


def _train(config: RunConfig, run_dir: Path, *, callbacks: Iterable[Callback], progress: bool,
           resume_path: Path | None, resumed: bool) -> dict[str, float]:
    """`fit` once the config is settled: build, train, write the run's files, return the metrics."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    datamodule = build_datamodule(config.data)
    datamodule.order_seed = config.training_order_seed
    task = task_record(config.task).build_module(config.model, datamodule.num_classes, to_dict(config.optim),
                                                 config.detector)
    if config.init.path is not None and resume_path is None:  # a resumed run has its own weights
        init_backbone(task.model, config.init.path, strict=config.init.strict)
    if rank_zero_only.rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RESULTS_JSON).unlink(missing_ok=True)  # a stale result must not outlive a failed run
    if progress:  # the model summary, with the lab's FLOPs of one image through the training network
        image = example_input(task.model, config.model.in_chans, config.data.image_size,
                              task_record(config.task).takes_image_lists)
        callbacks = [*callbacks, FlopsSummary.of(task.model, image)]
    trainer = build_trainer(config, run_dir, callbacks=callbacks, progress=progress, resume=resume_path)
    task.optim_config = effective_optim(config, trainer.world_size)
    backend = config.trainer.compile_backend if config.trainer.compile else None
    task.prepare_network(channels_last=config.trainer.channels_last, compile_backend=backend)
    if rank_zero_only.rank == 0 and not resumed:  # a resumed run's config.yaml is never rewritten
        write_text(run_dir / CONFIG_YAML, dump_run_config(config))
        write_text(run_dir / "spec.json", config.model.to_json() + "\n")
    try:
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume_path)
    finally:
        if trainer.is_global_zero:
            fingerprint = environment_fingerprint(trainer.strategy.root_device, config.trainer.precision)
            write_text(run_dir / FINGERPRINT_JSON, json.dumps(fingerprint, indent=2) + "\n")
    history = next(cb for cb in trainer.callbacks if isinstance(cb, EpochHistory))
    result = {**history.best(), "epochs": float(trainer.current_epoch)}
    if trainer.is_global_zero:
        write_text(run_dir / RESULTS_JSON, json.dumps(result, indent=2) + "\n")
        monitor = task_record(config.task).monitor
        log.info("%s: best %s %.4f at epoch %d of %d", run_dir, monitor, result.get(monitor, float("nan")),
                 result.get("best_epoch", 0), result["epochs"])
    return result
