"""COCO instance loading (polygons, RLE, crowds, empty images, labels, bad input) and shapes-coco."""

import copy
import json
import logging
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from xvol_lab.data import DataConfig
from xvol_lab.data import shapes_coco as sc
from xvol_lab.data.canvas import shape_mask
from xvol_lab.data.coco import CocoDataModule, CocoInstances, detection_transforms
from xvol_lab.errors import ConfigError
from xvol_lab.schema import from_dict

# pycocotools' mask.decode trips a numpy 2 DeprecationWarning (copy keyword) on every call.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PARAMS = sc.ShapesCocoParams(image_size=64, num_train=12, num_val=6, num_classes=3, seed=0)


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    sc.generate_shapes_coco(root, PARAMS)
    return root


# ---- a hand-written instances file: every case the loader distinguishes -------------------------
def square_rle(size: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((size, size), np.uint8)
    m[x0:x1, x0:x1] = 1
    return m


def write_instances(root: Path, data: dict, images: dict[str, tuple[int, int]]) -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for name, (w, h) in images.items():
        Image.new("RGB", (w, h), (90, 90, 90)).save(root / "img" / name)
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return path


def base_instances() -> dict:
    rle = mask_utils.encode(np.asfortranarray(square_rle(40, 20, 30)))
    uncompressed = {"size": [40, 40], "counts": [20 * 40 + 5, 10, 30, 10, 40 * 40 - 20 * 40 - 5 - 50]}
    return {
        "images": [{"id": 10, "file_name": "a.png", "height": 40, "width": 40},
                   {"id": 11, "file_name": "b.png", "height": 40, "width": 40},
                   {"id": 12, "file_name": "c.png", "height": 40, "width": 40}],
        "categories": [{"id": 42, "name": "star"}, {"id": 3, "name": "circle"}, {"id": 7, "name": "ring"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [2, 4, 10, 8], "area": 80, "iscrowd": 0,
             "segmentation": [[2, 4, 12, 4, 12, 12, 2, 12]]},
            {"id": 2, "image_id": 10, "category_id": 42, "bbox": [20, 20, 10, 10], "area": 100, "iscrowd": 0,
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}},
            {"id": 3, "image_id": 10, "category_id": 7, "bbox": [0, 0, 40, 40], "area": 20, "iscrowd": 1,
             "segmentation": uncompressed},
            {"id": 4, "image_id": 11, "category_id": 7, "bbox": [5, 5, 0, 9], "area": 0, "iscrowd": 0,
             "segmentation": [[5, 5, 5, 14, 5, 9]]},
            {"id": 5, "image_id": 11, "category_id": 7, "bbox": [1, 1, 6, 6], "area": 36, "iscrowd": 0,
             "segmentation": [[1, 1, 7, 1, 7, 7, 1, 7]]},
            {"id": 6, "image_id": 11, "category_id": 3, "bbox": [9, 9, 3, -1], "area": 0, "iscrowd": 0,
             "segmentation": [[9, 9, 12, 9, 12, 10]]},
        ],
    }


IMAGES = {"a.png": (40, 40), "b.png": (40, 40), "c.png": (40, 40)}


def test_polygons_rle_crowds_empty_images_and_labels(tmp_path, caplog):
    path = write_instances(tmp_path, base_instances(), IMAGES)
    with caplog.at_level(logging.WARNING, logger="xvol_lab.data.coco"):
        ds = CocoInstances(path, tmp_path / "img")
    assert [r.message for r in caplog.records] == [
        f"{path}: skipped 2 annotations whose box has zero width or height"]
    assert ds.skipped == 2
    assert ds.category_ids == [3, 7, 42] and ds.classes == ["circle", "ring", "star"]
    assert len(ds) == 3
    image, target = ds[0]  # image 10: a polygon and an RLE; the crowd is left out
    assert image.shape == (3, 40, 40) and image.dtype == torch.uint8
    assert 0.35 < image.float().mean() / 255 < 0.36
    assert target["image_id"] == 10 and target["orig_size"] == (40, 40)
    assert target["labels"].tolist() == [1, 3]  # category 3 -> 1, 42 -> 3
    expected_boxes = torch.tensor([[2.0, 4.0, 12.0, 12.0], [20.0, 20.0, 30.0, 30.0]])
    torch.testing.assert_close(target["boxes"], expected_boxes)
    masks = target["masks"]
    assert masks.shape == (2, 40, 40) and masks.dtype == torch.uint8
    assert masks[0].sum() == 80 and masks[0, 4:12, 2:12].all()  # the polygon, as pycocotools draws it
    assert torch.equal(masks[1], torch.from_numpy(square_rle(40, 20, 30)))
    _, target = ds[1]  # image 11: two degenerate boxes skipped, one kept
    assert target["labels"].tolist() == [2] and target["masks"].shape == (1, 40, 40)
    _, target = ds[2]  # image 12: no annotations, kept as a negative image
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, 40, 40)
    assert len(ds.coco.anns) == 6  # evaluation sees the whole file, crowds included


def test_boxes_only_needs_no_segmentation(tmp_path):
    data = base_instances()
    for ann in data["annotations"]:
        del ann["segmentation"]
    ds = CocoInstances(write_instances(tmp_path, data, IMAGES), tmp_path / "img", masks=False)
    assert "masks" not in ds[0][1] and ds[0][1]["labels"].tolist() == [1, 3]


def _break(data: dict, case: str) -> str:
    """Corrupt `data` in place; returns the message expected after '<file>: '."""
    if case == "no annotations":
        del data["annotations"]
        return "missing key 'annotations' (expected a list)"
    if case == "annotation without bbox":
        del data["annotations"][1]["bbox"]
        return "annotation id 2: missing key 'bbox'"
    if case == "annotation without segmentation":
        del data["annotations"][4]["segmentation"]
        return "annotation id 5: missing key 'segmentation'"
    if case == "image without file_name":
        del data["images"][2]["file_name"]
        return "image id 12: missing key 'file_name'"
    if case == "undeclared category":
        data["annotations"][4]["category_id"] = 99
        return "annotation id 5: category_id 99 is not declared in 'categories' (3, 7, 42)"
    if case == "undeclared image":
        data["annotations"][0]["image_id"] = 77
        return "annotation id 1: image_id 77 is not declared in 'images'"
    if case == "bad bbox":
        data["annotations"][0]["bbox"] = [1, 2, 3]
        return "annotation id 1: bbox [1, 2, 3], expected [x, y, width, height]"
    if case == "bad segmentation":
        data["annotations"][1]["segmentation"] = {"counts": "abc"}
        return "annotation id 2: segmentation must be a list of polygons or an RLE {'counts', 'size'}"
    data["images"][1]["file_name"] = "missing.png"
    return None


BAD = ["no annotations", "annotation without bbox", "annotation without segmentation",
       "image without file_name", "undeclared category", "undeclared image", "bad bbox", "bad segmentation",
       "missing image file"]


@pytest.mark.parametrize("case", BAD)
def test_bad_annotations_raise_config_error_naming_file_and_id(tmp_path, case):
    data = copy.deepcopy(base_instances())
    message = _break(data, case)
    path = write_instances(tmp_path, data, IMAGES)
    if message is None:
        message = f"image id 11, annotation id 4: no image file {tmp_path / 'img' / 'missing.png'}"
    with pytest.raises(ConfigError) as err:
        CocoInstances(path, tmp_path / "img")
    assert str(err.value) == f"{path}: {message}"


def test_image_size_must_match_the_annotations(tmp_path):
    path = write_instances(tmp_path, base_instances(), {**IMAGES, "b.png": (40, 30)})
    ds = CocoInstances(path, tmp_path / "img")
    with pytest.raises(ConfigError, match=r"image id 11: .*b\.png is 40x30, the annotations say 40x40$"):
        ds[1]


def test_not_json_is_a_config_error(tmp_path):
    (tmp_path / "x.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"x\.json: not a JSON file"):
        CocoInstances(tmp_path / "x.json", tmp_path)


def test_flip_and_resize_keep_boxes_and_masks_aligned(tmp_path):
    path = write_instances(tmp_path, base_instances(), IMAGES)
    ds = CocoInstances(path, tmp_path / "img", transforms=detection_transforms(20, train=True))
    torch.manual_seed(0)
    flipped = set()
    for _ in range(12):
        image, target = ds[0]
        assert image.shape == (3, 20, 20) and target["masks"].shape == (2, 20, 20)
        assert target["orig_size"] == (40, 40)
        for box, mask in zip(target["boxes"], target["masks"], strict=True):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            extent = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
            torch.testing.assert_close(box, extent, atol=1.0, rtol=0)
        flipped.add(target["boxes"][0, 0].item())
    assert flipped == {1.0, 14.0}  # [2, 12] / 2 = [1, 6], mirrored: [20 - 6, 20 - 1]


# ---- shapes-coco ----------------------------------------------------------------------------------
def test_generation_is_deterministic(tmp_path, shapes_root):
    a = files(sc.shapes_coco_dir(shapes_root, PARAMS))
    b = files(sc.generate_shapes_coco(tmp_path / "b", PARAMS))
    assert len([k for k in a if k.endswith(".png")]) == 18
    assert a == b
    other = sc.ShapesCocoParams(**{**PARAMS.info()["params"], "seed": 1})
    c = files(sc.generate_shapes_coco(tmp_path / "c", other))
    assert a.keys() == c.keys() and a["images/train/000001.png"] != c["images/train/000001.png"]


def test_generated_annotations_describe_the_drawn_shapes(shapes_root):
    folder = sc.shapes_coco_dir(shapes_root, PARAMS)
    assert folder == shapes_root / "shapes-coco" / "c3-s64-n12-v6-seed0"
    coco = COCO(str(folder / "annotations/instances_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(sc.CLASS_SHAPES[:3])
    kinds = {"polygon": 0, "rle": 0}
    for image_id in coco.getImgIds():
        anns = coco.imgToAnns[image_id]
        assert 2 <= len(anns) <= 4
        masks = [coco.annToMask(a) for a in anns]
        assert max(np.sum(masks, axis=0).ravel()) == 1  # visible parts never overlap
        for ann, mask in zip(anns, masks, strict=True):
            kinds["polygon" if isinstance(ann["segmentation"], list) else "rle"] += 1
            assert mask.sum() == ann["area"] > 0
            ys, xs = np.nonzero(mask)
            np.testing.assert_allclose(ann["bbox"], [xs.min(), ys.min(), xs.max() - xs.min() + 1,
                                                     ys.max() - ys.min() + 1])
    assert kinds["polygon"] > 5 and kinds["rle"] > 5  # unoccluded and partly hidden shapes both occur


def test_polygons_match_the_painted_shape():
    rng = np.random.default_rng(3)
    for _ in range(20):
        kind = int(rng.integers(len(sc.CLASS_SHAPES)))
        p = sc.place(rng, sc.SHAPES.index(sc.CLASS_SHAPES[kind]), len(sc.SHAPES), 12.0, (14, 50), (14, 50))
        drawn = shape_mask(p, 64) > 0.5
        poly = sc.polygon_mask(sc.shape_polygons(p), 64) > 0
        assert (drawn & poly).sum() / (drawn | poly).sum() > 0.9, p


def test_generated_files_load_as_a_datamodule(shapes_root):
    cfg = DataConfig(name="shapes-coco", root=str(shapes_root), image_size=64, batch_size=4, num_workers=0,
                     num_train=PARAMS.num_train, num_val=PARAMS.num_val, num_classes=PARAMS.num_classes)
    dm = sc.ShapesCocoDataModule(cfg)  # DataConfig's name is for build_datamodule; not read here
    assert dm.num_classes == 3
    dm.prepare_data()
    dm.setup("fit")
    images, targets = next(iter(dm.train_dataloader()))
    assert len(images) == len(targets) == 4
    assert all(img.shape == (3, 64, 64) for img in images)
    assert all(t["masks"].shape[0] == len(t["boxes"]) == len(t["labels"]) for t in targets)
    assert len(dm.val_set) == 6 and dm.classes == list(sc.CLASS_SHAPES[:3])
    plain = CocoDataModule(DataConfig(name="coco", root=str(sc.shapes_coco_dir(shapes_root, PARAMS))))
    assert plain.num_classes == 3


def test_coco_2017_layout_and_missing_split(tmp_path):
    (tmp_path / "annotations").mkdir()
    path = write_instances(tmp_path, base_instances(), IMAGES)
    for split in ("train", "val"):
        path.rename(tmp_path / f"annotations/instances_{split}2017.json")
        (tmp_path / "img").rename(tmp_path / f"{split}2017")
        path = write_instances(tmp_path, base_instances(), IMAGES)
    dm = CocoDataModule(DataConfig(name="coco", root=str(tmp_path), image_size=40, num_workers=0))
    assert dm.num_classes == 3
    dm.setup()
    assert len(dm.train_set) == len(dm.val_set) == 3
    with pytest.raises(ConfigError, match="^coco: no val annotations; expected .*instances_val.json or "):
        _ = CocoDataModule(DataConfig(name="coco", root=str(tmp_path / "nowhere"))).num_classes


def _generate(root: str) -> None:
    sc.generate_shapes_coco(root, PARAMS)


@pytest.mark.slow
def test_concurrent_generation_makes_one_complete_folder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_generate, args=(str(tmp_path),)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    parent = tmp_path / "shapes-coco"
    assert sorted(p.name for p in parent.iterdir() if not p.name.endswith(".lock")) == [PARAMS.folder_name]
    assert files(parent / PARAMS.folder_name) == files(sc.generate_shapes_coco(tmp_path / "again", PARAMS))


def test_failed_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(folder, params):
        (folder / "annotations").mkdir()
        raise OSError("disk full")

    monkeypatch.setattr(sc, "_write", boom)
    with pytest.raises(OSError, match="disk full"):
        sc.generate_shapes_coco(tmp_path, PARAMS)
    assert [p.name for p in (tmp_path / "shapes-coco").iterdir()] == [f".{PARAMS.folder_name}.lock"]


def test_foreign_or_bad_parameters_are_config_errors(tmp_path, shapes_root):
    folder = sc.shapes_coco_dir(shapes_root, PARAMS)
    moved = sc.shapes_coco_dir(tmp_path, sc.ShapesCocoParams(**{**PARAMS.info()["params"], "seed": 5}))
    moved.parent.mkdir(parents=True)
    moved.symlink_to(folder)
    with pytest.raises(ConfigError, match=r"instances_val\.json: made by .*'seed': 0.*expected .*'seed': 5"):
        sc.generate_shapes_coco(tmp_path, sc.ShapesCocoParams(**{**PARAMS.info()["params"], "seed": 5}))
    with pytest.raises(ConfigError, match=r"^data\.num_classes: got 12, expected at most 9 for shapes-coco"):
        from_dict(DataConfig, {"name": "shapes-coco", "root": str(tmp_path), "num_classes": 12}, "data")
