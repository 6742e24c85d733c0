"""GPU check, step 2: host syncs per training step (bf16 autocast, channels-last, uint8 batch from pinned
memory, normalised on the device), counted with `torch.cuda.set_sync_debug_mode("warn")`.

A sync stalls the CPU until the GPU drains its queue, so the next kernels launch late, and it makes
CUDA-graph capture fail. The count is the warnings a step raises in "warn" mode minus those it raises
in the default mode (the step after two warm-up steps; the first builds the cached constants).
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu import StepTable, bf16_step, configure, step_args, sync  # noqa: E402

from xvol_lab.data.device import DeviceNormalize  # noqa: E402
from xvol_lab.models import BackboneSpec, build_classifier  # noqa: E402

NUM_CLASSES = 1000


def models(tiny: bool) -> dict[str, Callable[[], nn.Module]]:
    spec = BackboneSpec.preset("resnet50", **({"width_mult": 0.125, "stem": "small"} if tiny else {}))
    return {
        "torchvision resnet50": lambda: torchvision.models.resnet50(num_classes=NUM_CLASSES),
        "resnet50 all-conv": lambda: build_classifier(spec, NUM_CLASSES),
        "resnet50 xvol_pssa stage 3": lambda: build_classifier(spec.with_stage(3, op="xvol_pssa"), NUM_CLASSES),
        "resnet50 pssa stage 3, xvol_sa stage 4": lambda: build_classifier(
            spec.with_stage(3, op="pssa").with_stage(4, op="xvol_sa"), NUM_CLASSES),
    }


def training_step(model: nn.Module, device: torch.device, batch: int, size: int) -> Callable[[], None]:
    """One optimiser step of `model` on a pinned uint8 batch, bf16 autocast, channels-last."""
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    normalize = DeviceNormalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (batch,))
    if device.type == "cuda":
        images, labels = images.pin_memory(), labels.pin_memory()

    def step() -> None:
        x = normalize.images(images.to(device, non_blocking=True)).contiguous(memory_format=torch.channels_last)
        bf16_step(model, optimizer, x, labels.to(device, non_blocking=True))

    return step


def warnings_of(step: Callable[[], None], mode: str, device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.set_sync_debug_mode(mode)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
        return len(caught)
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            sync(device)


def main() -> None:
    args = step_args(__doc__)
    configure(args.device)
    batch, size = (4, 32) if args.tiny else (32, 224)
    table = StepTable("2. Host syncs per training step", ["model", "syncs per step"],
                      f"Bare training step, batch {batch} of {size} px, {args.device}.", args.out)
    for name, build in models(args.tiny).items():
        torch.manual_seed(0)
        step = training_step(build(), args.device, batch, size)
        step()
        step()
        sync(args.device)
        table.add([name, warnings_of(step, "warn", args.device) - warnings_of(step, "default", args.device)])


if __name__ == "__main__":
    main()
