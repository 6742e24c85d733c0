"""`lab.py study calibrate`: where the study's baseline sits on its primary metric, before any
operator is compared with it.

The baseline (the study's all-conv configuration) alone is trained over N seeds at each budget (in
epochs), one run folder per run, ``<runs>/<study>/calibrate/epochs_<E>/seed_<s>/``; a run that
finished (its `RECORD`) is kept, an interrupted one continues from its last checkpoint, so the
command resumes. Per budget the table gives the primary metric's mean, spread (sd, min, max), the
floor (the trivial level, `xvol_lab.study.trivial`, else the metric's low end) and ceiling (the
metric's high end), the baseline's position in the range, its distance to floor and ceiling as
fractions of the range, and whether the runs split into two clusters (`two_clusters`: a bimodal
outcome measures where a seed crossed a transition, not a property of the network). The runs still
to train run as many at once as the study's trials would (`xvol_lab.study.pool.local_workers`: on
the CPU with ``base.trainer.threads`` set, cores / threads), so a run's wall time is its time
beside the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import shutil
import statistics
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from xvol_lab import atomic
from xvol_lab.errors import ConfigError
from xvol_lab.markdown import format_number, markdown_table
from xvol_lab.quiet import log_to_stderr
from xvol_lab.schema import to_dict
from xvol_lab.study.config import StudyConfig, metric_range
from xvol_lab.study.pool import local_workers
from xvol_lab.study.trivial import trivial_level
from xvol_lab.tasks import fit
from xvol_lab.tasks.config import RunConfig
from xvol_lab.tasks.runner import CHECKPOINT_DIR

log = logging.getLogger(__name__)

FOLDER = "calibrate"
RECORD = "calibrate.json"  # {"value": primary metric, "wall_s": seconds} of a finished run
TABLE = "calibration"
SEPARATION = 2.0  # Ashman's D above which two clusters are well separated
COLUMNS = ("epochs", "n", "mean", "sd", "min", "max", "floor", "ceiling", "position", "above floor",
           "below ceiling", "bimodal", "wall (s)")


def two_clusters(values: Sequence[float]) -> str:
    """``no``, or ``yes: 3 runs near 0.52, 2 near 0.81``: split at the largest gap between sorted
    values with at least 2 runs on each side; two clusters when that gap is wider than either
    side's own range and Ashman's D = sqrt(2) |m1 - m2| / sqrt(s1^2 + s2^2) is above `SEPARATION`
    (evenly spread runs have neither); ``too few runs`` below 4."""
    xs = sorted(values)
    if len(xs) < 4:
        return "too few runs"
    gaps = [(xs[i + 1] - xs[i], i + 1) for i in range(1, len(xs) - 2)]  # both sides keep >= 2 runs
    gap, cut = max(gaps)
    low, high = xs[:cut], xs[cut:]
    spread = math.sqrt(statistics.variance(low) + statistics.variance(high))
    d = math.inf if spread == 0 else math.sqrt(2) * (statistics.fmean(high) - statistics.fmean(low)) / spread
    if gap <= max(low[-1] - low[0], high[-1] - high[0]) or d <= SEPARATION:
        return "no"
    return (f"yes: {len(low)} runs near {format_number(statistics.fmean(low))}, {len(high)} near "
            f"{format_number(statistics.fmean(high))}")


def _fingerprint(run: RunConfig) -> str:
    """What the run's result depends on (its whole config), as a short hash."""
    return hashlib.sha256(json.dumps(to_dict(run), sort_keys=True).encode()).hexdigest()[:16]


def _calibration_run(config: StudyConfig, seed: int, epochs: int) -> RunConfig:
    """The baseline's run config with `seed`, trained for `epochs`: validated every
    ``check_val_every_n_epoch`` epochs as in the study where that divides `epochs`, else after the
    last epoch alone (a study that validates only at its end, at another budget)."""
    spec = config.baseline_spec
    assert spec is not None
    run = config.run_config(spec, seed)
    every = run.trainer.check_val_every_n_epoch
    trainer = dataclasses.replace(run.trainer, max_epochs=epochs,
                                  check_val_every_n_epoch=every if epochs % every == 0 else epochs)
    return dataclasses.replace(run, trainer=trainer)


def _finished(config: StudyConfig, run_dir: Path, seed: int, epochs: int) -> dict[str, float] | None:
    """The record of a run that finished earlier with the same config, else None."""
    record, marker = run_dir / RECORD, run_dir / "fingerprint"
    fingerprint = _fingerprint(_calibration_run(config, seed, epochs))
    if record.is_file() and marker.is_file() and marker.read_text().strip() == fingerprint:
        return json.loads(record.read_text())
    return None


def _run(config: StudyConfig, run_dir: Path, seed: int, epochs: int) -> dict[str, float]:
    """The run's record: kept when it finished earlier with the same config, else trained (continued
    from its last checkpoint) now. A folder left by another config (the study file changed) starts over."""
    done = _finished(config, run_dir, seed, epochs)
    if done is not None:
        return done
    run = _calibration_run(config, seed, epochs)
    fingerprint = _fingerprint(run)
    record, marker = run_dir / RECORD, run_dir / "fingerprint"
    if run_dir.exists() and (not marker.is_file() or marker.read_text().strip() != fingerprint):
        log.info("calibrate: %s was run with another config; starting it over", run_dir)
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_text(marker, fingerprint + "\n")
    resume = "last" if (run_dir / CHECKPOINT_DIR / "last.ckpt").is_file() else None
    log.info("calibrate: baseline, %d epochs, seed %d%s", epochs, seed, " (continued)" if resume else "")
    start = time.monotonic()
    metrics = fit(run, run_dir, progress=False, resume=resume)
    metric = config.metric_names[0]
    if metric not in metrics:
        raise ConfigError(f"objectives.0.metric: {metric} is not logged by the task "
                          f"(logged: {', '.join(sorted(metrics))}); calibrate needs a logged primary metric")
    result = {"value": float(metrics[metric]), "wall_s": time.monotonic() - start}
    atomic.write_text(record, json.dumps(result) + "\n")
    return result


def _run_all(config: StudyConfig, jobs: Sequence[tuple[Path, int, int]]) -> list[dict[str, float]]:
    """`_run` for each (run_dir, seed, epochs) of `jobs`, in order. The ones still to train run as
    many at once as a study's trials would (`local_workers`: cores / base.trainer.threads on the CPU),
    each in a process of its own; one at a time in this process otherwise."""
    records = [_finished(config, *job) for job in jobs]
    todo = [i for i, record in enumerate(records) if record is None]
    workers = min(len(todo), local_workers(config.base.trainer))
    if workers <= 1:
        return [_run(config, *job) for job in jobs]
    log.info("calibrate: %d runs to train, %d at once", len(todo), workers)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked torch thread pools
    with ProcessPoolExecutor(workers, mp_context=context, initializer=log_to_stderr) as pool:
        trained = dict(zip(todo, pool.map(_run, *zip(*[(config, *jobs[i]) for i in todo], strict=True)),
                           strict=True))
    return [record if record is not None else trained[i] for i, record in enumerate(records)]


def floor_and_ceiling(config: StudyConfig) -> tuple[float, float]:
    """The primary metric's floor (trivial level, else its range's low end) and ceiling (high end)."""
    metric = config.metric_names[0]
    low, high = metric_range(metric) or (math.nan, math.nan)
    try:
        floor = trivial_level(config).get(metric, low)
    except (ConfigError, OSError) as err:
        log.warning("no trivial level: %s", err)
        floor = low
    return floor, high


def calibration_row(epochs: int, values: Sequence[float], walls: Sequence[float], floor: float,
                    bounds: tuple[float, float]) -> dict[str, object]:
    """One budget's row of the table (`COLUMNS`) from its runs' values and wall times."""
    low, high = bounds
    width = high - low
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else math.nan

    def share(x: float) -> float:
        return x / width if math.isfinite(width) and width > 0 else math.nan

    return {"epochs": epochs, "n": len(values), "mean": mean, "sd": sd, "min": min(values), "max": max(values),
            "floor": floor, "ceiling": high, "position": share(mean - low), "above floor": share(mean - floor),
            "below ceiling": share(high - mean), "bimodal": two_clusters(values),
            "wall (s)": statistics.fmean(walls)}


def calibrate(name: str, config: StudyConfig, *, runs: Path, seeds: int, budgets: Sequence[int]) -> pd.DataFrame:
    """Train (or read back) the baseline of study `name` over `seeds` seeds at each budget and return
    the table (one row per budget, `COLUMNS`); writes calibration.md and .csv beside the runs."""
    if config.baseline_spec is None:
        raise ConfigError(f"study {name}: no all-conv configuration in enqueue or the grid; calibrate runs "
                          "the baseline")
    folder = runs / name / FOLDER
    floor, ceiling = floor_and_ceiling(config)
    bounds = (metric_range(config.metric_names[0]) or (math.nan, ceiling))
    seed_list = [config.base.seed + i for i in range(seeds)]
    jobs = [(folder / f"epochs_{epochs}" / f"seed_{seed}", seed, epochs) for epochs in budgets for seed in seed_list]
    records = _run_all(config, jobs)
    rows = []
    for k, epochs in enumerate(budgets):
        mine = records[k * seeds:(k + 1) * seeds]
        rows.append(calibration_row(epochs, [r["value"] for r in mine], [r["wall_s"] for r in mine], floor, bounds))
    table = pd.DataFrame(rows, columns=list(COLUMNS))
    atomic.write_text(folder / f"{TABLE}.csv", table.to_csv(index=False))
    atomic.write_text(folder / f"{TABLE}.md", calibration_markdown(name, config, table))
    return table


def calibration_markdown(name: str, config: StudyConfig, table: pd.DataFrame) -> str:
    """The table with a line saying what was run."""
    metric = config.metric_names[0]
    seeds = int(table["n"].max()) if not table.empty else 0
    return (f"Calibration of `{name}`: the all-conv baseline alone, {seeds} seeds per budget, primary metric "
            f"`{metric}`; position / above floor / below ceiling are fractions of the metric's range.\n\n"
            f"{markdown_table(table)}\n")


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The table with numbers rounded for reading."""
    return table.map(lambda v: format_number(v) if isinstance(v, float) else v)
