"""`export_study`: a study's best trial(s) as deployable folders, checked before they are kept.

Each exported trial gets a folder ``trial_<n>/`` with::

    spec.json      the architecture (`lab.py train --arch spec.json`, `BackboneSpec.from_json`)
    best.ckpt      the trained Lightning checkpoint (copied from the trial's run dir)
    deploy.pt      the re-parameterized model (`xvol_lab.tasks.export_deploy` / `load_deploy`)
    model.onnx     the deploy model in ONNX (opset 17), input ``images`` (N, C, S, S), output ``logits``
    MODEL_CARD.md  metrics, params, FLOPs, latency, study and trial, spec, and the check below

The check (`verify_export`): on a batch of validation images (random ones if the data cannot be
loaded), the deploy model and the ONNX model (onnxruntime) must give the training model's logits
y within ``1e-5 * max(1, |y|)`` and ``1e-4 * max(1, |y|)`` with the same argmax; otherwise
`ExportCheckError`. The export folder is replaced whole, and only when every trial passed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from optuna.trial import FrozenTrial
from torch import Tensor, nn

from xvol_lab.config import load_run_config
from xvol_lab.data import build_datamodule
from xvol_lab.errors import ConfigError
from xvol_lab.models import BackboneSpec
from xvol_lab.study.progress import pareto_front
from xvol_lab.study.report.source import StudyData, configuration_label
from xvol_lab.study.report.tables import STAGE_COLUMNS, objective_column, trials_table
from xvol_lab.study.report.writer import format_number, markdown_table, staged_dir
from xvol_lab.tasks import ClassificationTask, export_deploy, load_deploy
from xvol_lab.tasks.runner import CHECKPOINT_DIR

log = logging.getLogger(__name__)

SPEC = "spec.json"
CHECKPOINT = "best.ckpt"
DEPLOY = "deploy.pt"
ONNX = "model.onnx"
CARD = "MODEL_CARD.md"
INDEX = "README.md"
OPSET = 17
DEPLOY_TOL = 1e-5
ONNX_TOL = 1e-4
CHECK_IMAGES = 16


class ExportCheckError(ConfigError):
    """The deploy or ONNX model does not reproduce the training model's predictions."""


@dataclass(frozen=True)
class CheckResult:
    """How closely the exported models follow the training model on `images` inputs (`source`)."""

    images: int
    source: str
    deploy_error: float  # max |deploy - y| / max(1, |y|)
    onnx_error: float  # max |onnx - y| / max(1, |y|)
    argmax_agree: bool  # ONNX and training model pick the same class for every image

    def problems(self) -> list[str]:
        """What fails the check (empty when it passes)."""
        out = []
        if not self.deploy_error <= DEPLOY_TOL:
            out.append(f"the deploy checkpoint differs: max |diff|/max(1,|y|) = {self.deploy_error:.2e} "
                       f"> {DEPLOY_TOL:g}")
        if not self.onnx_error <= ONNX_TOL:
            out.append(f"the ONNX model differs: max |diff|/max(1,|y|) = {self.onnx_error:.2e} "
                       f"> {ONNX_TOL:g}")
        if not self.argmax_agree:
            out.append("the ONNX model predicts another class for some images")
        return out

    def describe(self) -> str:
        """One sentence for the model card."""
        return (f"On {self.source}: deploy max |diff|/max(1,|y|) = {self.deploy_error:.2e} (at most "
                f"{DEPLOY_TOL:g}); ONNX {self.onnx_error:.2e} (at most {ONNX_TOL:g}), same predicted class "
                f"for {'every' if self.argmax_agree else 'NOT every'} image.")


def pareto_fronts(trials: list[FrozenTrial], directions: list[str]) -> list[list[FrozenTrial]]:
    """`trials` (complete) by non-dominated rank: the Pareto front, then the front of the rest, ..."""
    fronts, rest = [], list(trials)
    while rest:
        front = pareto_front(rest, directions)
        fronts.append(front)
        rest = [t for t in rest if t not in front]
    return fronts


def select_trials(data: StudyData, top: int | None = None) -> list[FrozenTrial]:
    """The trials to export: the `top` best (single objective: by the objective; several: by Pareto
    rank, then the first objective); by default the best trial, or the whole Pareto front."""
    if top is not None and top < 1:
        raise ConfigError(f"--top: got {top}, expected an integer >= 1")
    if not data.complete:
        raise ConfigError(f"study {data.name}: no complete trial to export ({data.tally.pruned} pruned, "
                          f"{data.tally.failed} failed, {data.tally.running} running)")
    sign = 1.0 if data.directions[0] == "maximize" else -1.0
    fronts = [sorted(front, key=lambda t: (-sign * t.values[0], t.number))
              for front in pareto_fronts(data.complete, data.directions)]
    ordered = [t for front in fronts for t in front]
    if top is None:
        top = 1 if len(data.metric_names) == 1 else len(fronts[0])
    return ordered[:top]


def check_images(run_dir: Path, spec: BackboneSpec, data: StudyData,
                 n: int = CHECK_IMAGES) -> tuple[Tensor, str]:
    """Up to `n` validation images of the trial's data (its config.yaml), as prepared for training;
    seeded random images of the study's size when the data is not there (none is generated here)."""
    try:
        config = load_run_config(run_dir / "config.yaml")
        cfg = dataclasses.replace(config.data, num_workers=0, batch_size=n)
        datamodule = build_datamodule(cfg)
        datamodule.setup("validate")
        images = next(iter(datamodule.val_dataloader()))[0][:n]
        return images, f"{len(images)} validation images of {cfg.name}"
    except (ConfigError, OSError) as err:
        log.warning("%s: no validation images (%s); checking on random images", run_dir, err)
        size = data.config.base.data.image_size
        generator = torch.Generator().manual_seed(0)
        return torch.randn(n, spec.in_chans, size, size, generator=generator), f"{n} random images"


def export_onnx(model: nn.Module, path: Path, example: Tensor) -> None:
    """Save `model` (eval) as ONNX at `path`: fixed image size, any batch size."""
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation and constant-folding notes
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), opset_version=OPSET, dynamo=False,
                          input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


def _scaled_error(actual: Tensor, expected: Tensor) -> float:
    return ((actual - expected).abs() / expected.abs().clamp(min=1)).max().item()


def verify_export(folder: Path, images: Tensor, source: str = "the given images") -> CheckResult:
    """Compare the deploy checkpoint and the ONNX model in `folder` with its training checkpoint."""
    import onnxruntime

    task = ClassificationTask.load_from_checkpoint(folder / CHECKPOINT, map_location="cpu")
    deploy = load_deploy(folder / DEPLOY)
    with torch.no_grad():
        expected = task.model.eval()(images)
        deployed = deploy(images)
    session = onnxruntime.InferenceSession(str(folder / ONNX), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {"images": images.numpy()})[0])
    return CheckResult(images=len(images), source=source, deploy_error=_scaled_error(deployed, expected),
                       onnx_error=_scaled_error(onnx_out, expected),
                       argmax_agree=bool((onnx_out.argmax(1) == expected.argmax(1)).all()))


def model_card(data: StudyData, trial: FrozenTrial, spec: BackboneSpec, row: pd.Series,
               check: CheckResult) -> str:
    """The MODEL_CARD.md text of an exported trial (`row`: its line of `trials_table`)."""
    objectives = ", ".join(f"{objective_column(m)} {format_number(v)} ({d})"
                           for m, v, d in zip(data.metric_names, trial.values, data.directions, strict=True))
    hidden = {"number", "state", "reason", *STAGE_COLUMNS}
    shown = {k: format_number(v) for k, v in row.items() if k not in hidden and format_number(v)}
    values = pd.DataFrame({"quantity": list(shown), "value": list(shown.values())})
    stages = pd.DataFrame({"stage": [1, 2, 3, 4], "operator": [row[c] for c in STAGE_COLUMNS]})
    return "\n".join([
        f"# {spec.describe()}", "",
        f"Study `{data.name}` (`{data.shown_url}`), trial {trial.number}: {configuration_label(spec)}.", "",
        f"Objectives: {objectives}.", "",
        "## Metrics and cost",
        "Metrics of the best epoch; params, latency and FLOPs of the deploy form (one image).", "",
        markdown_table(values),
        "## Architecture", "", markdown_table(stages), "```json", spec.to_json(), "```", "",
        "## Files", "",
        f"- `{SPEC}`: the spec; `lab.py train --arch {SPEC}` retrains it, `BackboneSpec.from_json` reads it",
        f"- `{CHECKPOINT}`: the trained checkpoint (`ClassificationTask.load_from_checkpoint`)",
        f"- `{DEPLOY}`: the re-parameterized model (`xvol_lab.tasks.load_deploy`)",
        f"- `{ONNX}`: the deploy model, ONNX opset {OPSET}; input `images` (N, {spec.in_chans}, "
        f"{data.config.base.data.image_size}, {data.config.base.data.image_size}) normalised like the "
        "training data, output `logits`", "",
        "## Check", "", check.describe(), ""])


def export_trial(data: StudyData, trial: FrozenTrial, folder: Path, row: pd.Series) -> CheckResult:
    """Write the export of `trial` into the new folder `folder` and check it (ExportCheckError)."""
    run_dir = trial.user_attrs.get("run_dir")
    checkpoint = Path(run_dir) / CHECKPOINT_DIR / "best.ckpt" if run_dir else None
    if checkpoint is None or not checkpoint.is_file():
        raise ConfigError(f"study {data.name}, trial {trial.number}: no checkpoint at "
                          f"{checkpoint or '(no run_dir recorded)'}; expected the trial's best.ckpt")
    folder.mkdir()
    shutil.copy2(checkpoint, folder / CHECKPOINT)
    spec = ClassificationTask.load_from_checkpoint(folder / CHECKPOINT, map_location="cpu").spec
    (folder / SPEC).write_text(spec.to_json() + "\n")
    export_deploy(folder / CHECKPOINT, folder / DEPLOY)
    images, source = check_images(Path(run_dir), spec, data)
    export_onnx(load_deploy(folder / DEPLOY), folder / ONNX, images[:1])
    check = verify_export(folder, images, source)
    if check.problems():
        raise ExportCheckError(f"study {data.name}, trial {trial.number}: {'; '.join(check.problems())} "
                               f"(on {source})")
    (folder / CARD).write_text(model_card(data, trial, spec, row, check))
    return check


def export_study(data: StudyData, out: Path, top: int | None = None) -> list[Path]:
    """Export the selected trials (`select_trials`) to folder `out` (replaced whole, only if every
    trial passes its check); returns the trial folders."""
    if data.config.task != "classification":
        raise ConfigError(f"study {data.name}: task {data.config.task!r}; export handles classification "
                          "studies (a deploy checkpoint of a classifier)")
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
                                 f"(`trial_<number>/`), each with {SPEC}, {CHECKPOINT}, {DEPLOY}, {ONNX} "
                                 f"and {CARD}.\n\n" + markdown_table(index.reset_index(drop=True)))
    log.info("exported %d trial(s) of %s to %s", len(trials), data.name, out)
    return [Path(out) / f"trial_{t.number}" for t in trials]
