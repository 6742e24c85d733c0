"""`init.path` / `init.strict`: a backbone trained on one task starts another task's network; torchvision
weights load; mismatches are refused with one line (or, not strict, only matching stages load)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from _helpers import detector_overrides
from lightning.pytorch.callbacks import Callback
from torchvision.models import resnet18

from xvol_lab.cli.main import main
from xvol_lab.errors import ConfigError
from xvol_lab.models import BackboneSpec, build_classifier
from xvol_lab.models.detection import DetectorConfig, build_detector
from xvol_lab.models.semantic_fpn import build_semantic_fpn
from xvol_lab.tasks import fit
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.transfer import STAGES, backbone_of, backbone_tensors, init_backbone

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SPEC = {"block": "basic", "depths": [1, 1, 1, 1], "width_mult": 0.125, "stem": "imagenet"}
DETECTOR = detector_overrides()


def model_overrides(spec: dict) -> list[str]:
    return [f"model.{k}={v}".replace(" ", "") for k, v in spec.items()]


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cls")
    config = load_run_config(None, [f"data.root={root / 'data'}", "data.image_size=32", "data.num_classes=4",
                                    "data.num_train=32", "data.num_val=16", "data.batch_size=16",
                                    "data.num_workers=0", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                                    *model_overrides(SPEC)])
    fit(config, root / "run", progress=False)
    return root / "run"


class FirstAndLosses(Callback):
    """The backbone tensors when fit starts, and the training loss of every step."""

    def __init__(self) -> None:
        self.start: dict[str, torch.Tensor] = {}
        self.losses: list[float] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        self.start = {k: v.clone() for k, v in backbone_of(pl_module.model).state_dict().items()}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_detection_starts_from_the_classification_backbone_and_learns(classification_run, tmp_path):
    trained = torch.load(classification_run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    expected, _ = backbone_tensors(trained)
    config = load_run_config(None, [
        "task=detection", "data.name=shapes-coco", f"data.root={tmp_path / 'data'}", "data.image_size=64",
        "data.num_classes=3", "data.num_train=16", "data.num_val=4", "data.batch_size=4",
        "data.num_workers=0", "trainer.max_epochs=3", "trainer.accelerator=cpu", "optim.lr=0.01",
        "optim.warmup_epochs=0", "optim.schedule=constant", *model_overrides(SPEC), *DETECTOR,
        f"init.path={classification_run}"])
    probe = FirstAndLosses()
    fit(config, tmp_path / "det", callbacks=[probe], progress=False)
    assert set(probe.start) == set(expected) and len(expected) > 30
    for key, value in expected.items():
        assert torch.equal(probe.start[key], value), key
    first, last = sum(probe.losses[:3]) / 3, sum(probe.losses[-3:]) / 3
    assert len(probe.losses) == 12 and last < 0.8 * first, probe.losses


def test_a_torchvision_state_dict_loads_into_the_all_conv_resnet(tmp_path):
    torch.manual_seed(0)
    reference = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    ours = build_classifier(BackboneSpec.preset("resnet18"), 1000)
    report = init_backbone(ours, path)
    assert report.matched == len(ours.backbone.state_dict()) == len(reference.state_dict()) - 2  # all but fc
    assert report.missing == report.unexpected == () and report.loaded_stages == STAGES
    assert report.describe() == (f"init from {path}: 120 tensors matched, 0 missing, 0 unexpected; stages "
                                 "loaded: stem, layer1, layer2, layer3, layer4")
    ours.eval(), reference.eval()
    ours.fc.load_state_dict(reference.fc.state_dict())
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), reference(images), rtol=1e-5, atol=1e-5)
    detector = build_detector(BackboneSpec.preset("resnet18"), 3, DetectorConfig(min_size=64, max_size=64), masks=False)
    assert init_backbone(detector, path).matched == report.matched
    assert torch.equal(detector.backbone.body.layer3[1].op2.conv.weight, reference.layer3[1].conv2.weight)


def small(**stage3) -> BackboneSpec:
    spec = BackboneSpec.from_dict(SPEC)
    return spec.with_stage(3, **stage3) if stage3 else spec


def test_strict_refuses_another_operator_and_not_strict_loads_the_matching_stages(tmp_path):
    torch.manual_seed(0)
    source = build_classifier(small(op="xvol_pssa", shift=2), 4)
    path = tmp_path / "source.pt"
    torch.save({"state_dict": source.state_dict()}, path)
    target = build_semantic_fpn(small(), 4)
    before = {k: v.clone() for k, v in target.backbone.state_dict().items()}
    with pytest.raises(ConfigError, match=re.escape(f"{path}: backbone tensor layer3.0.op1.bn.weight is "
                                                    "missing from the file (10 missing, 22 unexpected)")):
        init_backbone(target, path)
    assert all(torch.equal(v, before[k]) for k, v in target.backbone.state_dict().items())  # nothing loaded
    report = init_backbone(target, path, strict=False)
    assert report.loaded_stages == ("stem", "layer1", "layer2", "layer4")
    assert report.skipped_stages == ("layer3",)
    assert report.describe().endswith("stages loaded: stem, layer1, layer2, layer4; "
                                      "stages left as initialised: layer3")
    after = target.backbone.state_dict()
    for key, value in after.items():
        if key.startswith("layer3."):
            assert torch.equal(value, before[key]), key
        else:
            assert torch.equal(value, source.backbone.state_dict()[key]), key
    assert report.matched == sum(not k.startswith("layer3.") for k in after)
    assert all(k.startswith("layer3.") for k in (*report.missing, *report.unexpected))


def test_a_shape_mismatch_names_the_key(tmp_path):
    path = tmp_path / "wide.pt"
    torch.save(build_classifier(BackboneSpec.from_dict({**SPEC, "width_mult": 0.25}), 4).state_dict(), path)
    with pytest.raises(ConfigError, match=re.escape(f"{path}: stem.conv.weight has shape (16, 3, 7, 7), the "
                                                    "network's (8, 3, 7, 7)")):
        init_backbone(build_classifier(small(), 4), path)
    with pytest.raises(ConfigError, match="no stage of the backbone matches"):
        init_backbone(build_classifier(small(), 4), path, strict=False)


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "no such file or folder"),
    (lambda p: p.write_bytes(b"not a checkpoint"), "cannot read weights"),
    (lambda p: torch.save({"epoch": 3}, p), "not a checkpoint or state dict"),
    (lambda p: torch.save({"fc.weight": torch.zeros(2, 2)}, p), "no backbone tensors"),
])
def test_bad_init_files_exit_2_with_one_line_and_no_run_folder(tmp_path, capsys, make, message):
    path = tmp_path / "init.pt"
    make(path)
    code = main(["train", "--run-dir", str(tmp_path / "run"), "--no-progress",
                 "--set", f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.num_train=16",
                 "data.num_val=16", "data.num_workers=0", *model_overrides(SPEC), f"init.path={path}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"lab.py: error: {path}: {message}") and "\n" not in err, err
    assert not (tmp_path / "run").exists()


def test_a_study_export_folder_of_one_trial_stands_for_that_trial(classification_run, tmp_path):
    export = tmp_path / "export"
    (export / "trial_3").mkdir(parents=True)
    checkpoint = (classification_run / "checkpoints" / "best.ckpt").read_bytes()
    (export / "trial_3" / "best.ckpt").write_bytes(checkpoint)
    network = build_classifier(BackboneSpec.from_dict(SPEC), 4)
    assert init_backbone(network, export).source == str(export / "trial_3" / "best.ckpt")
    (export / "trial_5").mkdir()
    (export / "trial_5" / "best.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=re.escape(f"{export}: a study export of 2 trials; expected one of "
                                                    "its folders (trial_3, trial_5)")):
        init_backbone(network, export)


def test_task_defaults_make_a_quick_run_of_each_task():
    detection = load_run_config(None, ["task=instance_segmentation"])
    assert (detection.data.name, detection.data.image_size, detection.model.stem) == ("shapes-coco", 64,
                                                                                      "imagenet")
    assert detection.detector.min_size == detection.detector.max_size == 64
    assert detection.trainer.max_epochs == 2
    segmentation = load_run_config(None, ["task=semantic_segmentation", "data.num_train=7"])
    assert (segmentation.data.name, segmentation.data.num_train) == ("shapes-seg", 7)  # --set still wins
    assert load_run_config(None, []).data.name == "shapes"
