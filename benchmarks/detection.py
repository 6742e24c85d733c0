"""Mask R-CNN training speed: our detector over the spec backbone against torchvision's own.

    python benchmarks/detection.py [--quick] [--device cuda] [--threads N] [--no-write]

One training iteration = forward with targets, summed losses, backward, SGD step, at batch 2 of
256 px images (CPU sizes). Our all-conv ResNet-50 detector (`build_detector`) and torchvision's
`maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)` have the same layers and get the
same sizes, sampling settings and weights, so their ratio measures the cost of the wrapping
(target >= 0.95). Both sample 128 RoIs per image (torchvision: 512), so that the mask head does
not drown the backbone, where the operators differ, and every image holds 32 ground-truth boxes,
so that each model's heads get the same 32 positive RoIs per image whatever its proposals.
X-volution(PSSA) in stage 3 (all other weights shared) is timed in the same interleaved run.
On CPU one thread by default: the machine is shared, and one thread gives steady medians.
Writes the "Detection" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import device_name, markdown_table, publish, time_interleaved  # noqa: E402
from torchvision.models.detection import maskrcnn_resnet50_fpn  # noqa: E402

from xvol_lab.allocator import keep_freed_memory  # noqa: E402
from xvol_lab.models import BackboneSpec  # noqa: E402
from xvol_lab.models.detection import DetectorConfig, build_detector, from_torchvision_keys  # noqa: E402

NUM_CLASSES = 90  # torchvision's default 91 outputs include the background
# Enough ground-truth boxes that every model fills its quota of 32 positive RoIs per image (ground
# truth joins the proposals): the mask head, the costliest part, then does the same work in each.
BOXES_PER_IMAGE = 32
SAMPLING = dict(rpn_pre_nms_top_n_train=1000, rpn_post_nms_top_n_train=500, box_batch_size_per_image=128)
TARGET_RATIO = 0.95
REFERENCE = "torchvision maskrcnn_resnet50_fpn"
ALL_CONV = "ours, resnet50 all conv"
XVOL = "ours, resnet50 xvol_pssa in stage 3"


def batch_of(size: int, batch: int, device: torch.device) -> tuple[list[torch.Tensor], list[dict]]:
    """Random images with `BOXES_PER_IMAGE` boxes each (and filled-box masks), the same for every model."""
    gen = torch.Generator().manual_seed(0)
    images, targets = [], []
    n = BOXES_PER_IMAGE
    for _ in range(batch):
        xy = torch.rand(n, 2, generator=gen) * size * 0.6
        wh = torch.rand(n, 2, generator=gen) * size * 0.3 + size * 0.1
        boxes = torch.cat([xy, xy + wh], 1)
        masks = torch.zeros(n, size, size, dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist(), strict=True):
            m[y0:y1, x0:x1] = 1
        images.append(torch.rand(3, size, size, generator=gen).to(device))
        labels = torch.randint(1, NUM_CLASSES + 1, (n,), generator=gen)
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


def share_weights(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load every tensor of `state` whose key and shape `model` has (so the models propose alike)."""
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k in own and own[k].shape == v.shape},
                          strict=False)
    return model


def train_step(model: nn.Module, images: list[torch.Tensor], targets: list[dict]) -> Callable[[], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        sum(model(images, targets).values()).backward()
        optimizer.step()
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    args = parser.parse_args()
    keep_freed_memory()  # as the lab's processes do
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    repeats = 3 if args.quick else 9
    size, batch = (256, 2) if device.type == "cpu" else (512, 4)
    sizes = dict(min_size=size, max_size=size, **SAMPLING)
    detector = DetectorConfig(**sizes)
    conv = BackboneSpec.preset("resnet50")
    xvol = conv.with_stage(3, op="xvol_pssa")
    models = {
        REFERENCE: maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, **sizes),
        ALL_CONV: build_detector(conv, NUM_CLASSES, detector, masks=True),
        XVOL: build_detector(xvol, NUM_CLASSES, detector, masks=True),
    }
    shared = from_torchvision_keys(models[REFERENCE].state_dict())
    models[ALL_CONV].load_state_dict(shared)  # the same weights: the same proposals, the same work
    share_weights(models[XVOL], shared)
    images, targets = batch_of(size, batch, device)
    steps = {name: train_step(m.to(device).train(), images, targets) for name, m in models.items()}
    seconds = time_interleaved(steps, repeats, warmup=2, device=device)
    ref = seconds[REFERENCE]
    rows = [[name, f"{1 / t:.3f}", f"{ref / t:.3f}",
             f"{sum(p.numel() for p in models[name].parameters()) / 1e6:.1f}"] for name, t in seconds.items()]
    ratio, xvol_ratio = ref / seconds[ALL_CONV], ref / seconds[XVOL]
    body = "\n".join([
        f"Device: {device_name(device)}; torch {torch.__version__}; Mask R-CNN training iterations "
        f"(forward with targets, backward, SGD step), batch {batch} of {size} px images with "
        f"{BOXES_PER_IMAGE} boxes each (every model samples the same 32 positive RoIs per image), "
        "torchvision's weights loaded into ours (stage 3 of the X-volution model excepted), "
        f"min_size = max_size = {size}, {SAMPLING['box_batch_size_per_image']} RoIs per image and "
        f"{SAMPLING['rpn_post_nms_top_n_train']} proposals (both models); medians of {repeats} interleaved "
        "repeats.",
        "",
        f"- Our all-conv ResNet-50 Mask R-CNN runs at **{ratio:.3f}x** torchvision's speed "
        f"(target >= {TARGET_RATIO}: {'met' if ratio >= TARGET_RATIO else 'MISSED'}).",
        f"- X-volution(PSSA) in stage 3: **{xvol_ratio:.3f}x** torchvision's speed "
        f"({seconds[ALL_CONV] / seconds[XVOL]:.3f}x our all-conv detector's).",
        "",
        markdown_table(["model", "iterations/s", "speed / torchvision", "params (M)"], rows),
    ])
    title = f"Detection (benchmarks/detection.py, {device.type})"
    publish(title, body, write=not args.no_write)


if __name__ == "__main__":
    main()
