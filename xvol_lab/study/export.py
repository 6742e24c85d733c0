"""`export_study`: a study's best trial(s) as deployable folders, checked before they are kept.

Any task. Each exported trial gets a folder ``trial_<n>/`` with::

    spec.json      the architecture (`lab.py train --arch spec.json`, `BackboneSpec.from_json`)
    config.yaml    the trial's run config (`lab.py train --config config.yaml` retrains it)
    best.ckpt      the trained Lightning checkpoint (copied from the trial's run dir)
    deploy.pt      the re-parameterized network with its classes and preprocessing
                   (`xvol_lab.tasks.export.load_deployed`; `lab.py predict` runs it)
    model.onnx     the deploy network in ONNX (opset 17, fixed image size; `xvol_lab.tasks.onnx`), its
                   metadata_props describing it (`xvol_lab.tasks.describe`: task, input, size, mean
                   and std, classes, spec, versions, the training run's fingerprint)
    MODEL_CARD.md  the task's metrics, params, FLOPs/MACs, latency, study and trial, spec, inputs and
                   preprocessing, versions and fingerprint, the check

The check (`verify_export`): on validation images of the trial's data (seeded random images when
the data cannot be loaded), the deploy checkpoint and the ONNX model must reproduce the trained
network (`xvol_lab.tasks.verify`: logits within 1e-5 / 1e-4 with the same class for classifiers,
1e-4 for segmentation logits, matched boxes, scores and labels within tolerance and masks with an
IoU of at least 0.99 for detectors); otherwise `ExportCheckError` (exit 1). The export folder is
replaced whole, and only when every trial passed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from optuna.trial import FrozenTrial
from torch import Tensor

from xvol_lab.errors import ConfigError
from xvol_lab.study.environment import fingerprint_of
from xvol_lab.study.report.columns import STAGE_COLUMNS
from xvol_lab.study.report.source import StudyData, configuration_label, control_role
from xvol_lab.study.report.tables import objective_column, trials_table
from xvol_lab.study.report.writer import format_number, markdown_table, staged_dir
from xvol_lab.study.standing import best_trials
from xvol_lab.tasks.config import RunConfig, load_run_config
from xvol_lab.tasks.describe import description_lines, export_description, onnx_metadata
from xvol_lab.tasks.export import (
    DataInfo,
    data_info,
    export_deploy,
    load_deploy,
    load_deployed,
    load_trained,
    validation_batch,
)
from xvol_lab.tasks.fingerprint import FINGERPRINT_JSON
from xvol_lab.tasks.onnx import (
    ONNX_FILE,
    OPSET,
    PROGRAM_FILE,
    export_portable,
    fixed_size,
    load_portable,
    write_metadata,
)
from xvol_lab.tasks.registry import task_record
from xvol_lab.tasks.runner import CHECKPOINT_DIR
from xvol_lab.tasks.verify import DEPLOY_TOL, LOGITS_TOL, Comparison, compare_outputs

log = logging.getLogger(__name__)

SPEC = "spec.json"
CONFIG = "config.yaml"
CHECKPOINT = "best.ckpt"
DEPLOY = "deploy.pt"
CARD = "MODEL_CARD.md"
INDEX = "README.md"
CHECK_IMAGES = 16


class ExportCheckError(ConfigError):
    """The deploy or ONNX model does not reproduce the trained model's predictions."""


@dataclass(frozen=True)
class CheckResult:
    """How closely the exported networks follow the trained one on `images` inputs (`source`)."""

    images: int
    source: str
    comparisons: tuple[Comparison, ...]

    def problems(self) -> list[str]:
        """What fails the check (empty when it passes)."""
        return [f"the {c.artefact} differs: {c.summary}" for c in self.comparisons if not c.passed]

    def describe(self) -> str:
        """One paragraph for the model card."""
        return f"On {self.source}: " + "; ".join(f"{c.artefact}: {c.summary}" for c in self.comparisons) + "."


def pareto_fronts(trials: list[FrozenTrial], directions: list[str]) -> list[list[FrozenTrial]]:
    """`trials` (complete) by non-dominated rank: the Pareto front, then the front of the rest, ..."""
    fronts, rest = [], list(trials)
    while rest:
        front = best_trials(rest, directions)
        fronts.append(front)
        rest = [t for t in rest if t not in front]
    return fronts


def select_trials(data: StudyData, top: int | None = None) -> list[FrozenTrial]:
    """The trials to export: the `top` best (single objective: by the objective; several: by Pareto
    rank, then the first objective); by default the best trial, or the whole Pareto front. Control
    trials (a deliberately weakened network, the baseline under other seeds) are never exported."""
    if top is not None and top < 1:
        raise ConfigError(f"--top: got {top}, expected an integer >= 1")
    if not data.complete:
        raise ConfigError(f"study {data.name}: no complete trial to export ({data.tally.pruned} pruned, "
                          f"{data.tally.failed} failed, {data.tally.running} running)")
    candidates = [t for t in data.complete if not control_role(t)]  # a control is no architecture to ship
    if not candidates:
        raise ConfigError(f"study {data.name}: only control trials are complete; nothing to export")
    sign = 1.0 if data.directions[0] == "maximize" else -1.0
    fronts = [sorted(front, key=lambda t: (-sign * t.values[0], t.number))
              for front in pareto_fronts(candidates, data.directions)]
    ordered = [t for front in fronts for t in front]
    if top is None:
        top = 1 if len(data.metric_names) == 1 else len(fronts[0])
    return ordered[:top]


def check_images(run_dir: Path, config: RunConfig,
                 n: int = CHECK_IMAGES) -> tuple[Tensor | list[Tensor], str, DataInfo | None]:
    """Up to `n` validation images of the trial's data as the network takes them, where they come
    from, and the data's preprocessing and classes; seeded random images (and no `DataInfo`) when
    the data is not there (none is generated here)."""
    try:
        images, datamodule = validation_batch(config, n)
        source = f"{len(images)} validation images of {config.data.name}"
        return images, source, data_info(datamodule, config.task)
    except (ConfigError, OSError) as err:
        log.warning("%s: no validation images (%s); checking on random images", run_dir, err)
        size = config.data.image_size
        generator = torch.Generator().manual_seed(0)
        if task_record(config.task).takes_image_lists:
            images = list(torch.rand(n, config.model.in_chans, size, size, generator=generator))
        else:
            images = torch.randn(n, config.model.in_chans, size, size, generator=generator)
        return images, f"{n} random images", None


def verify_export(folder: Path, images: Tensor | list[Tensor],
                  source: str = "the given images") -> CheckResult:
    """Compare the deploy checkpoint and the ONNX model in `folder` with its trained checkpoint
    (detectors: on `images` resized to the exported size, `fixed_size`)."""
    deployed = load_deployed(folder / DEPLOY)
    task = deployed.config.task
    images = fixed_size(images, deployed.config.data.image_size, task)
    trained = load_trained(folder / CHECKPOINT, task)
    portable_file = folder / ONNX_FILE if (folder / ONNX_FILE).is_file() else folder / PROGRAM_FILE
    portable_name = "ONNX model" if portable_file.name == ONNX_FILE else "torch.export program"
    portable = load_portable(portable_file, task)
    with torch.no_grad():
        expected = trained.model(images)
        outputs = {"deploy checkpoint": deployed.network(images), portable_name: portable(images)}
    tolerances = {"deploy checkpoint": DEPLOY_TOL if task_record(task).output == "labels" else LOGITS_TOL,
                  portable_name: LOGITS_TOL}
    comparisons = tuple(compare_outputs(task, name, out, expected, tolerances[name])
                        for name, out in outputs.items())
    return CheckResult(images=len(images), source=source, comparisons=comparisons)


def model_card(data: StudyData, trial: FrozenTrial, config: RunConfig, row: pd.Series,
               check: CheckResult, fallback: str | None = None,
               description: dict[str, Any] | None = None) -> str:
    """The MODEL_CARD.md text of an exported trial (`row`: its line of `trials_table`; `description`:
    `xvol_lab.tasks.describe.export_description`, its inputs and environment)."""
    spec = config.model
    objectives = ", ".join(f"{objective_column(m)} {format_number(v)} ({d})"
                           for m, v, d in zip(data.metric_names, trial.values, data.directions, strict=True))
    hidden = {"number", "state", "reason", *STAGE_COLUMNS}
    shown = {k: format_number(v) if not isinstance(v, str) else v for k, v in row.items()
             if k not in hidden and (isinstance(v, str) and v or format_number(v))}
    values = pd.DataFrame({"quantity": list(shown), "value": list(shown.values())})
    stages = pd.DataFrame({"stage": [1, 2, 3, 4], "operator": [row[c] for c in STAGE_COLUMNS]})
    record = task_record(config.task)
    io = record.onnx_io.format(c=spec.in_chans, s=config.data.image_size)
    return "\n".join([
        f"# {spec.describe()}", "",
        f"Study `{data.name}` (`{data.shown_url}`), trial {trial.number}: {config.task} on "
        f"{config.data.name}, {configuration_label(spec)}.", "",
        f"Objectives: {objectives}.", "",
        "## Metrics and cost",
        "The task's metrics of the best epoch; params, latency and FLOPs of the trained deploy network on "
        "validation images. FLOPs count a multiply-add as 2 (`GFLOPs (2×MAC)`); `GMACs` count it once, "
        "the unit of torchvision's and the paper's figures.", "",
        markdown_table(values),
        "## Architecture", "", markdown_table(stages), "```json", spec.to_json(), "```", "",
        *(description_lines(description) if description is not None else []),
        "## Files", "",
        f"- `{SPEC}`: the spec; `lab.py train --arch {SPEC}` retrains it, `BackboneSpec.from_json` reads it",
        f"- `{CONFIG}`: the run config; `lab.py train --config {CONFIG}` retrains the trial",
        f"- `{CHECKPOINT}`: the trained checkpoint (`{record.lightning_module().__name__}.load_from_checkpoint`; "
        f"`init.path=<this folder>` starts another task's backbone from it)",
        f"- `{DEPLOY}`: the re-parameterized network with its classes and preprocessing "
        "(`xvol_lab.tasks.export.load_deployed`; `lab.py predict <this folder> IMAGES... --out DIR`)",
        (f"- `{ONNX_FILE}`: the deploy network, ONNX opset {OPSET}, fixed image size; {io}"
         if fallback is None else
         f"- `{PROGRAM_FILE}`: the deploy network as a `torch.export` program (`torch.export.load`), "
         f"dynamic batch; no `{ONNX_FILE}`: {fallback}"), "",
        "## Check", "", check.describe(), ""])


def training_fingerprint(trial: FrozenTrial, run_dir: Path) -> dict[str, Any] | None:
    """The environment the exported run trained in: its fingerprint.json, else the trial's stored one."""
    try:
        return json.loads((run_dir / FINGERPRINT_JSON).read_text())
    except (OSError, ValueError):
        return fingerprint_of(trial)


def export_trial(data: StudyData, trial: FrozenTrial, folder: Path, row: pd.Series) -> CheckResult:
    """Write the export of `trial` into the new folder `folder` and check it (ExportCheckError)."""
    run_dir = trial.user_attrs.get("run_dir")
    checkpoint = Path(run_dir) / CHECKPOINT_DIR / "best.ckpt" if run_dir else None
    if checkpoint is None or not checkpoint.is_file():
        raise ConfigError(f"study {data.name}, trial {trial.number}: no checkpoint at "
                          f"{checkpoint or '(no run_dir recorded)'}; expected the trial's best.ckpt")
    run_dir = Path(run_dir)
    config = load_run_config(run_dir / CONFIG)
    folder.mkdir()
    shutil.copy2(checkpoint, folder / CHECKPOINT)
    shutil.copy2(run_dir / CONFIG, folder / CONFIG)
    spec = load_trained(folder / CHECKPOINT, config.task).spec
    (folder / SPEC).write_text(spec.to_json() + "\n")
    images, source, info = check_images(run_dir, config)
    images = fixed_size(images, config.data.image_size, config.task)
    export_deploy(folder / CHECKPOINT, folder / DEPLOY, config, info)
    try:
        _, fallback = export_portable(load_deploy(folder / DEPLOY), folder, images[0], config.task)
    except RuntimeError as err:
        raise ExportCheckError(f"study {data.name}, trial {trial.number}: {err}") from None
    description = export_description(dataclasses.replace(config, model=spec), info,
                                     training_fingerprint(trial, run_dir))
    if fallback is None:
        write_metadata(folder / ONNX_FILE, onnx_metadata(description))
    check = verify_export(folder, images, source)
    if check.problems():
        raise ExportCheckError(f"study {data.name}, trial {trial.number}: {'; '.join(check.problems())} "
                               f"(on {source})")
    (folder / CARD).write_text(model_card(data, trial, config, row, check, fallback, description))
    return check


def export_study(data: StudyData, out: Path, top: int | None = None) -> list[Path]:
    """Export the selected trials (`select_trials`) to folder `out` (replaced whole, only if every
    trial passes its check); returns the trial folders."""
    missing = [name for name in ("onnx", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"export: {', '.join(missing)} not installed; expected the onnx extra "
                          "(pip install 'xvol_lab[onnx]')")
    trials = select_trials(data, top)
    table = trials_table(data).set_index("number", drop=False)
    with staged_dir(out, "export") as tmp:
        for trial in trials:
            export_trial(data, trial, tmp / f"trial_{trial.number}", table.loc[trial.number])
        index = table.loc[[t.number for t in trials],
                          ["number", *STAGE_COLUMNS, *(objective_column(m) for m in data.metric_names)]]
        (tmp / INDEX).write_text(f"# Export of study `{data.name}`\n\nOne folder per trial "
                                 f"(`trial_<number>/`), each with {SPEC}, {CONFIG}, {CHECKPOINT}, {DEPLOY}, "
                                 f"{ONNX_FILE} (or {PROGRAM_FILE}) and {CARD}.\n\n"
                                 + markdown_table(index.reset_index(drop=True)))
    log.info("exported %d trial(s) of %s to %s", len(trials), data.name, out)
    return [Path(out) / f"trial_{t.number}" for t in trials]
