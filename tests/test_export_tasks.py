"""`lab.py study export` of semantic segmentation and instance segmentation studies: real tiny runs
exported, the artefacts compared with the trained networks independently of the export's own check,
and the torch.export fallback where ONNX fails."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch
from _helpers import detector_yaml, tiny_detector
from _report_studies import open_study
from optuna.distributions import CategoricalDistribution
from optuna.trial import create_trial

from xvol_lab.cli.main import main
from xvol_lab.study.config import load_study_config
from xvol_lab.study.export import verify_export
from xvol_lab.study.space import spec_of
from xvol_lab.tasks import fit
from xvol_lab.tasks import onnx as task_onnx
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.export import load_deployed, load_trained, validation_batch
from xvol_lab.tasks.onnx import OPSET, OnnxNetwork, fixed_size
from xvol_lab.tasks.verify import compare_detections

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

DETECTOR = detector_yaml(tiny_detector(box_detections_per_img=10, box_score_thresh=0.0))
STUDIES = {
    "seg": ("semantic_segmentation", "{name: shapes-seg, image_size: 32, num_classes: 4, num_train: 16, "
            "num_val: 8, batch_size: 8, num_workers: 0}", "stem: small", "val/miou"),
    "inst": ("instance_segmentation", "{name: shapes-coco, image_size: 64, num_classes: 3, num_train: 8, "
             "num_val: 4, batch_size: 4, num_workers: 0}", "stem: imagenet", "val/mask_ap"),
}


def study_file(folder: Path, name: str) -> Path:
    task, data, stem, metric = STUDIES[name]
    path = folder / f"{name}.yaml"
    path.write_text(f"""
description: export test ({task})
task: {task}
base:
  data: {data[:-1]}, root: {folder / 'data'}}}
  model: {{block: basic, depths: [1, 1, 1, 1], width_mult: 0.125, {stem}}}
  detector: {DETECTOR}
  optim: {{name: adamw, lr: 0.003, weight_decay: 0.01, warmup_epochs: 0}}
  trainer: {{accelerator: cpu, log_every_n_steps: 1}}
space:
  stages:
    3: {{op: [conv, xvol_sa]}}
objectives: [{{metric: {metric}, direction: maximize}}]
budget: {{n_trials: 2, epochs: 1}}
""")
    return path


def export_of(folder: Path, name: str) -> tuple[Path, Path]:
    """Train trial 0 (X-volution(SA) in stage 3) of study `name` for one epoch and export it."""
    path = study_file(folder, name)
    _, config = load_study_config(path)
    run_dir = folder / "runs" / name / "trial_0"
    params = {"stage3.op": "xvol_sa"}
    result = fit(config.run_config(spec_of(config.space, config.base.model, params)), run_dir, progress=False)
    study = open_study(folder / "runs", name, ["maximize"])
    metric = STUDIES[name][3]
    study.add_trial(create_trial(values=[result[metric]], params=params,
                                 distributions={"stage3.op": CategoricalDistribution(["conv", "xvol_sa"])},
                                 user_attrs={**result, "params_m": 0.01, "flops_g": 0.004,
                                             "run_dir": str(run_dir)}))
    assert main(["study", "export", str(path), "--runs", str(folder / "runs")]) == 0
    return folder / "runs" / name / "export" / "trial_0", run_dir


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return export_of(tmp_path_factory.mktemp("seg"), "seg")


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    return export_of(tmp_path_factory.mktemp("inst"), "inst")


def test_segmentation_export_reproduces_the_logits(seg):
    folder, run_dir = seg
    assert {p.name for p in folder.iterdir()} == {"spec.json", "config.yaml", "best.ckpt", "deploy.pt",
                                                  "model.onnx", "MODEL_CARD.md"}
    config = load_run_config(folder / "config.yaml")
    images, _ = validation_batch(config, 4)
    trained = load_trained(folder / "best.ckpt", "semantic_segmentation")
    deployed = load_deployed(folder / "deploy.pt")
    assert deployed.classes == ("background", "circle", "square", "triangle")
    assert deployed.preprocess.size == 32 and deployed.preprocess.fixed_size
    with torch.no_grad():
        expected = trained.model(images)
        torch.testing.assert_close(deployed.network(images), expected, atol=1e-4, rtol=0)
    model = onnx.load(str(folder / "model.onnx"))
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= OPSET
    logits = OnnxNetwork(folder / "model.onnx", "semantic_segmentation")(images)
    assert logits.shape == (4, 4, 32, 32)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    card = (folder / "MODEL_CARD.md").read_text()
    result = load_run_config(run_dir / "config.yaml")
    assert result.task == "semantic_segmentation" and "| val/miou |" in card and "| GMACs | 0.002 |" in card
    assert "semantic_segmentation on shapes-seg" in card and "ONNX model: max |diff|" in card


def test_instance_segmentation_export_reproduces_boxes_labels_scores_and_masks(inst):
    folder, _ = inst
    config = load_run_config(folder / "config.yaml")
    images, _ = validation_batch(config, 4)
    trained = load_trained(folder / "best.ckpt", "instance_segmentation")
    deployed = load_deployed(folder / "deploy.pt")
    assert len(deployed.classes) == 3 and deployed.category_ids == (1, 2, 3)
    assert not deployed.preprocess.fixed_size
    assert deployed.preprocess.mean is None  # the detector normalises inside
    with torch.no_grad():
        expected, got = trained.model(images), deployed.network(images)
    onnx_out = OnnxNetwork(folder / "model.onnx", "instance_segmentation")(images)
    assert sum(len(p["boxes"]) for p in expected) == 40  # 10 per image at score threshold 0
    for out in (got, onnx_out):
        for e, g in zip(expected, out, strict=True):
            assert set(g) == {"boxes", "labels", "scores", "masks"}
            order_e, order_g = e["scores"].argsort(descending=True), g["scores"].argsort(descending=True)
            torch.testing.assert_close(g["scores"][order_g], e["scores"][order_e], atol=1e-3, rtol=0)
    comparison = compare_detections("ONNX model", onnx_out, expected)
    assert comparison.passed and "min mask IoU" in comparison.summary
    card = (folder / "MODEL_CARD.md").read_text()
    assert "| val/mask_ap |" in card and "| val/box_ap |" in card
    assert "outputs `boxes` (xyxy), `labels`, `scores`, `masks`" in card


def test_detectors_are_checked_at_the_exported_size(inst):
    """Validation keeps each image's aspect ratio (COCO images are not square); the ONNX detector
    takes S x S, so the check resizes every artefact's input alike."""
    folder, _ = inst
    images = [torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    assert [tuple(i.shape) for i in fixed_size(images, 64, "detection")] == [(3, 64, 64)] * 2
    batch = torch.rand(2, 3, 64, 64)
    assert fixed_size(batch, 64, "classification") is batch
    check = verify_export(folder, images, "two 64 x 96 images")
    assert [c.artefact for c in check.comparisons] == ["deploy checkpoint", "ONNX model"]
    assert check.problems() == [], check.describe()


def test_detection_check_fails_on_moved_boxes_or_a_missing_detection():
    boxes = torch.tensor([[1.0, 1.0, 20.0, 20.0], [30.0, 30.0, 60.0, 50.0]])
    want = [{"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": torch.tensor([0.9, 0.8])}]
    assert compare_detections("x", want, want).passed
    moved = [{**want[0], "boxes": boxes + torch.tensor([0.0, 0.0, 0.5, 0.0])}]
    assert not compare_detections("x", moved, want).passed
    dropped = [{k: v[:1] for k, v in want[0].items()}]
    result = compare_detections("x", dropped, want)
    assert not result.passed and "1 unmatched" in result.summary


def test_a_network_onnx_cannot_take_is_exported_with_torch_export(monkeypatch, tmp_path):
    from xvol_lab.models import BackboneSpec, build_classifier

    def no_onnx(*args, **kwargs):
        raise RuntimeError("Couldn't export operator xvol::pssa_fwd")

    monkeypatch.setattr(task_onnx, "export_onnx", no_onnx)
    spec = BackboneSpec.preset("resnet18", stem="small", width_mult=0.125)
    network = build_classifier(spec, 4, deploy=True)
    example = torch.randn(3, 16, 16)
    name, reason = task_onnx.export_portable(network.eval(), tmp_path, example, "classification")
    assert (name, reason) == ("model.pt2", "ONNX export failed (RuntimeError: Couldn't export operator "
                                           "xvol::pssa_fwd)")
    program = task_onnx.load_portable(tmp_path / name, "classification")
    batch = torch.randn(5, 3, 16, 16)  # another batch size than the example's
    with torch.no_grad():
        torch.testing.assert_close(program(batch), network(batch), atol=1e-5, rtol=0)
    with pytest.raises(RuntimeError, match="torch.export does not take torchvision's detectors"):
        task_onnx.export_portable(network, tmp_path, example, "detection")


def test_pssa_exports_to_onnx_through_its_composite_path(tmp_path):
    """The fused PSSA kernels have no ONNX form; under export the layer takes the composite path,
    which computes the same attention."""
    from xvol_lab import reparameterize
    from xvol_lab.models import BackboneSpec, build_classifier

    torch.manual_seed(0)
    spec = BackboneSpec.preset("resnet18", stem="small", width_mult=0.125)
    spec = spec.with_stage(3, op="xvol_pssa", shift=2)
    network = reparameterize(build_classifier(spec, 4).eval())
    images = torch.randn(3, 3, 16, 16)
    assert task_onnx.export_portable(network, tmp_path, images[0], "classification") == ("model.onnx", None)
    with torch.no_grad():
        expected = network(images)
    torch.testing.assert_close(OnnxNetwork(tmp_path / "model.onnx", "classification")(images), expected,
                               atol=1e-4, rtol=1e-4)
