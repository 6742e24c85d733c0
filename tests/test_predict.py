"""`lab.py predict`: exports of tiny trained runs predict image files as validation predicted them
(the trained network on the datamodule's batches is the reference); COCO results load in
pycocotools; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import detector_overrides, tiny_detector
from PIL import Image
from pycocotools.coco import COCO

from xvol_lab.cli.main import main
from xvol_lab.tasks import fit
from xvol_lab.tasks.coco_eval import to_coco_results
from xvol_lab.tasks.config import load_run_config
from xvol_lab.tasks.export import data_info, export_deploy, load_deployed, load_trained, validation_batch
from xvol_lab.tasks.onnx import export_portable

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

N = 6
DETECTOR = detector_overrides(tiny_detector(box_detections_per_img=10, box_score_thresh=0.0))
TASKS = {
    "classification": ["data.image_size=16", "data.num_classes=4", "model.stem=small"],
    "semantic_segmentation": ["data.name=shapes-seg", "data.image_size=32", "data.num_classes=4",
                              "model.stem=small"],
    "instance_segmentation": ["data.name=shapes-coco", "data.image_size=64", "data.num_classes=3",
                              "model.stem=imagenet", *DETECTOR],
}


def exported(root: Path, task: str):
    """A 1-batch run of `task` exported like `lab.py study export` does (deploy.pt, model.onnx);
    returns the export folder, the config and the first N validation image files."""
    config = load_run_config(None, [
        f"task={task}", f"data.root={root / 'data'}", "data.num_train=8", f"data.num_val={N}",
        f"data.batch_size={N}", "data.num_workers=0", "trainer.max_epochs=1", "trainer.accelerator=cpu",
        "trainer.limit_train_batches=1", "model.width_mult=0.125", "model.depths=[1,1,1,1]",
        "model.stage4.op=xvol_sa", *TASKS[task]])
    fit(config, root / "run", progress=False)
    folder = root / "export"
    folder.mkdir()
    images, datamodule = validation_batch(config, N)
    export_deploy(root / "run" / "checkpoints" / "best.ckpt", folder / "deploy.pt", config,
                  data_info(datamodule, task))
    network = load_trained(root / "run" / "checkpoints" / "best.ckpt", task).model
    assert export_portable(network, folder, images[0], task) == ("model.onnx", None)
    val = datamodule.val_set
    if task == "classification":
        files = [p for p, _ in val.samples]
    elif task == "semantic_segmentation":
        files = [p for p, _ in val.pairs]
    else:
        files = [val.image_dir / val.coco.imgs[i]["file_name"] for i in val.image_ids]
    return folder, config, files[:N]


@pytest.fixture(scope="module")
def cls(tmp_path_factory):
    return exported(tmp_path_factory.mktemp("cls"), "classification")


@pytest.fixture(scope="module")
def seg(tmp_path_factory):
    return exported(tmp_path_factory.mktemp("seg"), "semantic_segmentation")


@pytest.fixture(scope="module")
def inst(tmp_path_factory):
    return exported(tmp_path_factory.mktemp("inst"), "instance_segmentation")


def expected_outputs(folder: Path, config):
    """The trained network on the datamodule's validation batch: what training's validation saw."""
    images, _ = validation_batch(config, N)
    with torch.no_grad():
        return load_trained(folder.parent / "run" / "checkpoints" / "best.ckpt", config.task).model(images)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("onnx, tol", [(False, 1e-5), (True, 1e-4)])
def test_classification_writes_top_k_classes_with_probabilities(cls, tmp_path, capsys, onnx, tol):
    folder, config, files = cls
    out = tmp_path / "out"
    code = main(["predict", str(folder), *map(str, files), "--out", str(out), "--top-k", "3",
                 "--batch-size", "4", "--no-progress", *(["--onnx"] if onnx else [])])
    assert code == 0, capsys.readouterr().err
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 3 * N and [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    probs = expected_outputs(folder, config).softmax(1)
    top = probs.topk(3, dim=1)
    classes = load_deployed(folder / "deploy.pt").classes
    for i, path in enumerate(files):
        mine = rows[3 * i: 3 * i + 3]
        assert all(r["image"].endswith(path.name) for r in mine)  # relative to the inputs' common folder
        assert [r["class"] for r in mine] == [classes[k] for k in top.indices[i].tolist()]
        assert [int(r["label"]) for r in mine] == top.indices[i].tolist()
        torch.testing.assert_close(torch.tensor([float(r["probability"]) for r in mine]), top.values[i],
                                   atol=tol, rtol=0)


def test_unreadable_images_are_reported_and_skipped(cls, tmp_path, capsys):
    folder, _, files = cls
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["predict", str(folder), str(files[0]), str(bad), str(files[1]), "--out", str(out),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"lab.py predict: skipped {bad}: cannot read image")
    images = [r["image"] for r in read_csv(out / "predictions.csv")][::4]  # top-4 of 4 classes each
    assert len(images) == 2 and images[0].endswith(files[0].name) and images[1].endswith(files[1].name)


def test_instance_segmentation_writes_coco_results_pycocotools_loads(inst, tmp_path, capsys):
    folder, config, files = inst
    out = tmp_path / "out"
    assert main(["predict", str(folder), *map(str, files), "--out", str(out), "--no-progress"]) == 0
    coco = COCO(str(out / "images.json"))
    assert [coco.imgs[i]["file_name"] for i in sorted(coco.imgs)] == [p.name for p in files]
    assert sorted(coco.cats) == [1, 2, 3]
    boxes, segms = coco.loadRes(str(out / "bbox_results.json")), coco.loadRes(str(out / "segm_results.json"))
    expected = expected_outputs(folder, config)
    for image_id, prediction in zip(sorted(coco.imgs), expected, strict=True):
        want = to_coco_results(image_id, prediction, [1, 2, 3])
        got = boxes.loadAnns(boxes.getAnnIds(imgIds=[image_id]))
        assert len(got) == len(want["bbox"]) == 10
        assert [a["category_id"] for a in got] == [a["category_id"] for a in want["bbox"]]
        np.testing.assert_allclose([a["bbox"] for a in got], [a["bbox"] for a in want["bbox"]], atol=1e-3)
        np.testing.assert_allclose([a["score"] for a in got], [a["score"] for a in want["bbox"]], atol=1e-4)
        assert len(segms.getAnnIds(imgIds=[image_id])) == 10
    wide = tmp_path / "wide.png"  # 64 x 96: the ONNX detector takes 64 x 64, boxes come back in 96 px
    Image.fromarray(np.concatenate([np.array(Image.open(files[0]))] * 2, axis=1)[:, :96]).save(wide)
    assert main(["predict", str(folder), *map(str, files), str(wide), "--out", str(tmp_path / "onnx"),
                 "--onnx", "--no-progress"]) == 0
    onnx_images = COCO(str(tmp_path / "onnx" / "images.json"))
    assert onnx_images.imgs[N + 1]["width"] == 96 and onnx_images.imgs[N + 1]["height"] == 64
    onnx_boxes = onnx_images.loadRes(str(tmp_path / "onnx" / "bbox_results.json"))
    got = onnx_boxes.loadAnns(onnx_boxes.getAnnIds(imgIds=[1]))
    want = boxes.loadAnns(boxes.getAnnIds(imgIds=[1]))
    np.testing.assert_allclose([a["bbox"] for a in got], [a["bbox"] for a in want], atol=1e-2)
    wide_boxes = np.array([a["bbox"] for a in onnx_boxes.loadAnns(onnx_boxes.getAnnIds(imgIds=[N + 1]))])
    assert len(wide_boxes) == 10 and (wide_boxes[:, 0] + wide_boxes[:, 2]).max() <= 96 + 1e-3


def test_semantic_segmentation_writes_palette_masks_at_the_image_size(seg, tmp_path):
    folder, config, files = seg
    out = tmp_path / "out"
    assert main(["predict", str(folder), str(files[0].parent), "--out", str(out), "--no-progress"]) == 0
    expected = expected_outputs(folder, config).argmax(1)
    assert (out / "classes.txt").read_text().split() == ["background", "circle", "square", "triangle"]
    for path, labels in zip(files, expected, strict=True):
        mask = Image.open(out / "masks" / path.with_suffix(".png").name)
        assert mask.mode == "P" and mask.size == Image.open(path).size
        assert mask.getpalette()[:6] == [0, 0, 0, 128, 0, 0]
        np.testing.assert_array_equal(np.array(mask), labels.numpy())


def test_bad_input_is_one_line_exit_2_and_nothing_written(cls, tmp_path, capsys):
    folder, _, files = cls
    out = tmp_path / "out"
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "deploy.pt").write_bytes(b"garbage")
    cut = tmp_path / "cut"  # a copy cut short (a full disk): it was reported only as "(IndexError)"
    cut.mkdir()
    whole = (folder / "deploy.pt").read_bytes()
    (cut / "deploy.pt").write_bytes(whole[: len(whole) * 2 // 3])
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    cases = [
        ([str(tmp_path), str(files[0])], f"{tmp_path}: no deploy.pt; expected a trial folder"),
        ([str(corrupt), str(files[0])], f"{corrupt / 'deploy.pt'}: cannot read the deploy file: not a file "
                                        "torch.save wrote (no zip archive: another kind of file, or cut short); "
                                        "expected a deploy.pt written by `lab.py study export`"),
        ([str(cut), str(files[0])], f"{cut / 'deploy.pt'}: cannot read the deploy file: not a file torch.save "
                                    "wrote (no zip archive: another kind of file, or cut short)"),
        ([str(folder), str(tmp_path / "missing.png")], f"{tmp_path / 'missing.png'}: no such file or folder"),
        ([str(folder), str(bad)], f"{bad}: cannot read image"),
    ]
    for argv, message in cases:
        assert main(["predict", *argv, "--out", str(out), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"lab.py: error: {message}") and "\n" not in err, err
        assert not out.exists()
    full = tmp_path / "full"
    assert main(["predict", str(folder), str(files[0]), "--out", str(full), "--no-progress"]) == 2
    assert "full: exists; expected a new or empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_study_export_of_one_trial_stands_for_it(cls, tmp_path, capsys):
    folder, _, files = cls
    study_export = tmp_path / "export"
    for name in ("trial_7", "trial_9"):
        (study_export / name).mkdir(parents=True)
        (study_export / name / "deploy.pt").write_bytes((folder / "deploy.pt").read_bytes())
        if name == "trial_7":
            assert main(["predict", str(study_export), str(files[0]), "--out", str(tmp_path / "one"),
                         "--no-progress"]) == 0
    assert len(read_csv(tmp_path / "one" / "predictions.csv")) == 4
    two = tmp_path / "two"
    assert main(["predict", str(study_export), str(files[0]), "--out", str(two), "--no-progress"]) == 2
    assert "(this study export has 2: trial_7, trial_9)" in capsys.readouterr().err
