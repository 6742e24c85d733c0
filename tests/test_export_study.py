"""`lab.py study export`: one real tiny checkpoint (trained once here) exported as spec, checkpoint,
deploy checkpoint, ONNX and model card; the exported models are compared with the trained one
independently of the export's own check; trial selection; failures leave nothing behind."""

from __future__ import annotations

import dataclasses
import filecmp
import json
from pathlib import Path

import onnx
import onnxruntime
import optuna
import pytest
import torch
from _helpers import assert_close_scaled
from _report_studies import (
    CONV,
    NUM_CLASSES,
    add,
    build_ablation_study,
    build_pareto_study,
    metrics_of,
    open_study,
    write_study_file,
)
from optuna.trial import TrialState

from xvol_lab.cli.main import main
from xvol_lab.data import build_datamodule
from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.study import export as study_export
from xvol_lab.study.config import load_study_config
from xvol_lab.study.controls import CONTROL_ATTR, NEGATIVE, POSITIVE
from xvol_lab.study.export import OPSET, check_images, select_trials, verify_export
from xvol_lab.study.report import load_study_data
from xvol_lab.study.report.writer import format_number
from xvol_lab.study.space import spec_of
from xvol_lab.study.storage import default_storage_url
from xvol_lab.tasks import VAL_ACC1, export_deploy, fit, load_deploy
from xvol_lab.tasks.classification import ClassificationTask
from xvol_lab.tasks.config import load_run_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

PARAMS = {"stage3.op": "xvol_pssa", "stage3.shift": 2, "stage4.op": "xvol_sa"}
FILES = {"spec.json", "config.yaml", "best.ckpt", "deploy.pt", "MODEL_CARD.md"}


def portable_of(folder: Path) -> Path:
    """The folder's model.onnx, or its model.pt2 where the trial's ops do not export to ONNX: one of them."""
    found = [folder / name for name in ("model.onnx", "model.pt2") if (folder / name).is_file()]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Study 'exp': trial 1 is a real 1-epoch run of X-volution(PSSA, L=2) in stage 3 and
    X-volution(SA) in stage 4; trial 0 (same run dir, lower value), a pruned and a failed trial."""
    folder = tmp_path_factory.mktemp("exp")
    path = write_study_file(folder, "exp")
    _, config = load_study_config(path)
    run_dir = folder / "runs" / "exp" / "trial_1"
    result = fit(config.run_config(spec_of(config.space, config.base.model, PARAMS)), run_dir, progress=False)
    study = open_study(folder / "runs", "exp", ["maximize"])
    lower = result[VAL_ACC1] - 0.05
    add(study, PARAMS, [lower], attrs={**metrics_of(lower), "run_dir": str(run_dir)})
    add(study, PARAMS, [result[VAL_ACC1]],
        attrs={**result, "params_m": 0.02, "latency_ms": 1.25, "flops_g": 0.0042, "run_dir": str(run_dir)})
    add(study, CONV, state=TrialState.PRUNED, attrs={"prune_reason": "early"})
    add(study, CONV, state=TrialState.FAIL, attrs={"fail_reason": "crashed"})
    return path, folder / "runs", run_dir, result


@pytest.fixture(scope="module")
def exported(trained):
    path, runs, run_dir, result = trained
    code = main(["study", "export", str(path), "--runs", str(runs)])
    return code, runs / "exp" / "export"


def val_images(run_dir: Path, n: int = 8) -> torch.Tensor:
    config = load_run_config(run_dir / "config.yaml")
    datamodule = build_datamodule(config.data)
    datamodule.setup("validate")
    return datamodule.on_after_batch_transfer(next(iter(datamodule.val_dataloader())), 0)[0][:n]


def test_export_writes_one_folder_per_selected_trial(exported, capsys):
    code, out = exported
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "trial_1"]
    assert {p.name for p in (out / "trial_1").iterdir()} == FILES | {portable_of(out / "trial_1").name}
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".")] == []
    readme = (out / "README.md").read_text()
    assert "| 1 | conv | conv | xvol_pssa(L=2) | xvol_sa |" in readme
    assert "| number | stage1 | stage2 | stage3 | stage4 |" in readme  # stages numbered as in the paper


def test_exported_spec_rebuilds_the_trained_network(exported, trained):
    _, out = exported
    _, _, run_dir, _ = trained
    folder = out / "trial_1"
    spec = BackboneSpec.from_json((folder / "spec.json").read_text())
    task = ClassificationTask.load_from_checkpoint(folder / "best.ckpt", map_location="cpu")
    assert spec == task.spec
    assert load_run_config(None, arch=folder / "spec.json").model == spec  # what `lab.py train --arch` reads
    assert [s.op for s in spec.stages] == ["conv", "conv", "xvol_pssa", "xvol_sa"]
    assert spec.stages[2].shift == 2
    rebuilt = build_classifier(spec, NUM_CLASSES)
    assert list(rebuilt.state_dict()) == list(task.model.state_dict())
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in task.model.parameters())
    rebuilt.load_state_dict(task.model.state_dict())  # same shapes too
    assert filecmp.cmp(folder / "best.ckpt", run_dir / "checkpoints" / "best.ckpt", shallow=False)


def test_deploy_and_onnx_models_reproduce_the_trained_model(exported, trained):
    _, out = exported
    _, _, run_dir, _ = trained
    folder = out / "trial_1"
    images = val_images(run_dir)
    task = ClassificationTask.load_from_checkpoint(folder / "best.ckpt", map_location="cpu")
    with torch.no_grad():
        expected = task.model.eval()(images)
        deployed = load_deploy(folder / "deploy.pt")(images)
    assert_close_scaled(deployed, expected, 1e-5)
    check = verify_export(folder, images)
    assert all(c.passed for c in check.comparisons) and check.problems() == []
    if portable_of(folder).name == "model.pt2":  # PSSA's fused kernel does not export to ONNX
        assert [c.artefact for c in check.comparisons] == ["deploy checkpoint", "torch.export program"]
        program = torch.export.load(str(folder / "model.pt2")).module()
        for batch in (images, images[:1], images[:3]):  # the batch size is free
            assert_close_scaled(program(batch), expected[: len(batch)], 1e-4)
        assert "no `model.onnx`: ONNX export failed (" in (folder / "MODEL_CARD.md").read_text()
        return
    model = onnx.load(str(folder / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= OPSET
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    for batch in (images, images[:1], images[:3]):  # the batch size is free
        logits = torch.from_numpy(session.run(None, {"images": batch.numpy()})[0])
        assert_close_scaled(logits, expected[: len(batch)], 1e-4)
        assert torch.equal(logits.argmax(1), expected[: len(batch)].argmax(1))
    assert [c.artefact for c in check.comparisons] == ["deploy checkpoint", "ONNX model"]


def test_model_card_names_study_trial_metrics_costs_and_spec(exported, trained):
    _, out = exported
    _, _, _, result = trained
    card = (out / "trial_1" / "MODEL_CARD.md").read_text()
    assert card.startswith("# resnet-basic-1-1-1-1 [conv, conv, xvol_pssa(L=2), xvol_sa] width_mult=0.125 "
                           "stem=small")
    assert "Study `exp`" in card
    assert ("trial 1: classification on shapes, X-volution(PSSA, L=2) in stage 3; X-volution(SA) in stage 4"
            in card)
    assert f"| val/acc1 | {format_number(result[VAL_ACC1])} |" in card
    assert f"| val/loss | {format_number(result['val/loss'])} |" in card
    for line in ("| params (M) | 0.02 |", "| GFLOPs (2×MAC) | 0.0042 |", "| GMACs | 0.0021 |",
                 "| latency b1 (ms) | 1.25 |"):
        assert line in card
    assert "latency b16" not in card  # not measured: left out
    assert "| 3 | xvol_pssa(L=2) |" in card and "| 4 | xvol_sa |" in card  # stages 1..4, as in the paper
    assert (out / "trial_1" / "spec.json").read_text().strip() in card
    assert "validation images of shapes" in card and "same predicted class for every image" in card


def test_model_card_and_onnx_metadata_say_how_to_run_the_model(exported, trained):
    _, out = exported
    _, _, run_dir, _ = trained
    folder = out / "trial_1"
    datamodule = build_datamodule(load_run_config(run_dir / "config.yaml").data)
    datamodule.setup("validate")
    mean, std = [list(map(float, v)) for v in (datamodule.normalize.mean, datamodule.normalize.std)]
    fingerprint = json.loads((run_dir / "fingerprint.json").read_text())
    card = (folder / "MODEL_CARD.md").read_text()
    assert "- task: classification; input `images` (N, 3, 16, 16) normalised like the validation data" in card
    assert f"- mean: {mean}, std: {std}" in card and f"- classes (label order): {datamodule.classes}" in card
    assert f"threads {fingerprint['threads']}" in card and f"torch {torch.__version__}" in card
    if not (folder / "model.onnx").is_file():
        pytest.skip("this trial exported model.pt2 (ONNX export failed): no metadata_props to read")
    props = {p.key: p.value for p in onnx.load(str(folder / "model.onnx")).metadata_props}
    assert props["task"] == "classification" and json.loads(props["image_size"]) == 16
    assert props["input"].startswith("input `images` (N, 3, 16, 16)")
    assert json.loads(props["mean"]) == mean and json.loads(props["std"]) == std
    assert json.loads(props["classes"]) == list(datamodule.classes) and len(datamodule.classes) == NUM_CLASSES
    assert BackboneSpec.from_dict(json.loads(props["spec"])) == BackboneSpec.from_json(
        (folder / "spec.json").read_text())
    assert json.loads(props["fingerprint"]) == fingerprint
    assert json.loads(props["versions"])["torch"] == torch.__version__
    assert json.loads(props["versions"])["onnx"] == onnx.__version__
    # With only model.onnx: preprocess a validation image from the metadata alone, get the trained answer.
    images = val_images(run_dir, 4)  # normalised as training did
    raw = images * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]  # x / 255
    again = (raw - torch.tensor(json.loads(props["mean"]))[:, None, None]) / torch.tensor(
        json.loads(props["std"]))[:, None, None]
    session = onnxruntime.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    task = ClassificationTask.load_from_checkpoint(folder / "best.ckpt", map_location="cpu")
    with torch.no_grad():
        expected = task.model.eval()(images)
    logits = torch.from_numpy(session.run(None, {"images": again.numpy()})[0])
    assert torch.equal(logits.argmax(1), expected.argmax(1))


def test_a_failing_check_exits_1_and_writes_nothing(trained, tmp_path, monkeypatch, capsys):
    path, runs, _, _ = trained

    def broken_deploy(checkpoint, out_path, *args, **kwargs):
        export_deploy(checkpoint, out_path, *args, **kwargs)
        payload = torch.load(out_path, weights_only=True)
        payload["state_dict"]["fc.bias"] += 0.01
        torch.save(payload, out_path)

    monkeypatch.setattr(study_export, "export_deploy", broken_deploy)
    out = tmp_path / "export"
    assert main(["study", "export", str(path), "--runs", str(runs), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lab.py: error: study exp, trial 1: the deploy checkpoint differs")
    assert "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_and_no_complete_trial_exit_2(tmp_path, capsys):
    path = write_study_file(tmp_path, "gone")
    study = open_study(tmp_path / "runs", "gone", ["maximize"])
    add(study, CONV, state=TrialState.PRUNED, attrs={"prune_reason": "early"})
    assert main(["study", "export", str(path), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "study gone: no complete trial to export (1 pruned, 0 failed, 0 running)" in err
    add(study, CONV, [0.9], attrs={**metrics_of(0.9), "run_dir": str(tmp_path / "moved")})
    assert main(["study", "export", str(path), "--runs", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    checkpoint = tmp_path / "moved" / "checkpoints" / "best.ckpt"
    assert err == (f"lab.py: error: study gone, trial 1: no checkpoint at {checkpoint}; "
                   "expected the trial's best.ckpt")
    assert sorted(p.name for p in (tmp_path / "runs" / "gone").iterdir()) == ["study.db"]
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["study", "export", str(path), "--runs", str(tmp_path / "runs"),
                 "--out", str(blocker / "x")]) == 2
    assert "cannot write the export there" in capsys.readouterr().err


def test_top_must_be_positive(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "export", "stage_search", "--top", "0"])
    assert exit_info.value.code == 2 and "expected an integer >= 1" in capsys.readouterr().err


def test_selection_single_objective_best_first(tmp_path):
    data = load_study_data(build_ablation_study(tmp_path), runs=tmp_path / "runs")
    assert [t.number for t in select_trials(data)] == [2]
    assert [t.number for t in select_trials(data, 3)] == [2, 4, 1]  # 0.80, 0.75 (retry of 3), 0.70
    assert [t.number for t in select_trials(data, 50)] == [2, 4, 1, 5, 6, 0]


def test_selection_never_exports_a_control_trial(tmp_path):
    study_file = build_ablation_study(tmp_path)
    study = optuna.load_study(study_name="abl", storage=default_storage_url(tmp_path / "runs", "abl"))
    negative = add(study, CONV, [0.95], attrs={**metrics_of(0.95), CONTROL_ATTR: NEGATIVE})  # best value
    add(study, CONV, [0.90],
        attrs={**metrics_of(0.90), CONTROL_ATTR: POSITIVE})
    data = load_study_data(study_file, runs=tmp_path / "runs")
    assert negative in [t.number for t in data.complete]
    assert [t.number for t in select_trials(data, 3)] == [2, 4, 1]


def test_selection_multi_objective_front_then_next_front(tmp_path):
    data = load_study_data(build_pareto_study(tmp_path), runs=tmp_path / "runs")
    assert [t.number for t in select_trials(data)] == [0, 5, 2, 1]  # the front, best val/acc1 first
    assert [t.number for t in select_trials(data, 2)] == [0, 5]
    assert [t.number for t in select_trials(data, 6)] == [0, 5, 2, 1, 3, 4]  # then the second front


def test_check_images_are_validation_images_or_seeded_random_ones(trained, tmp_path):
    _, _, run_dir, _ = trained
    config = load_run_config(run_dir / "config.yaml")
    images, source, info = check_images(run_dir, config)
    assert source == "16 validation images of shapes" and torch.equal(images, val_images(run_dir, 16))
    assert info.preprocess.size == 16 and len(info.preprocess.mean) == 3 and len(info.classes) == NUM_CLASSES
    assert info.category_ids == ()
    moved = dataclasses.replace(config, data=dataclasses.replace(config.data, root=str(tmp_path / "gone")))
    random, source, info = check_images(tmp_path / "moved", moved)
    assert source == "16 random images" and random.shape == (16, 3, 16, 16) and info is None
    assert torch.equal(random, check_images(tmp_path / "moved", moved)[0])
