"""GPU check, steps 5-7: training throughput (images/s) and peak memory, bf16 autocast, channels-last.

    python benchmarks/gpu_train.py [--compiled | --loops]

Default (step 5): torchvision ResNet-50, our all-conv ResNet-50, X-volution(PSSA) in stage 3 and in all
stages, eager, bare loops on device-resident random batches, interleaved repeats (order rotated), each
timed with CUDA events over its steps; a ratio is the median of the per-repeat ratios. `--compiled`
(step 6): the same models under `torch.compile` (inductor), in that order, one repeat each (the first
steps compile; the compile time is reported). `--loops` (step 7): the Lightning loop (`ClassificationTask`,
bf16-mixed, `trainer.channels_last`) against a bare loop on the same model, optimiser and loader.
"""

from __future__ import annotations

import logging
import statistics
import sys
import time
import warnings
from pathlib import Path

import lightning.pytorch as L
import torch
import torchvision
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu import (  # noqa: E402
    StepTable,
    Stopwatch,
    bf16_step,
    configure,
    event_seconds,
    peak_memory_mib,
    reset_peak,
    step_args,
    sync,
)

from xvol_lab.models import BackboneSpec, build_classifier  # noqa: E402
from xvol_lab.schema import to_dict  # noqa: E402
from xvol_lab.tasks.classification import ClassificationTask  # noqa: E402
from xvol_lab.tasks.config import OptimConfig  # noqa: E402

NUM_CLASSES = 1000
OPTIM = OptimConfig(name="sgd", lr=0.01, warmup_epochs=0.0)
TORCHVISION, CONV, PSSA3, PSSA_ALL = ("torchvision resnet50", "resnet50 all-conv", "resnet50 xvol_pssa stage 3",
                                      "resnet50 xvol_pssa all stages")


def specs(tiny: bool) -> dict[str, BackboneSpec]:
    spec = BackboneSpec.preset("resnet50", **({"width_mult": 0.125, "stem": "small"} if tiny else {}))
    pssa_all = spec
    for stage in (1, 2, 3, 4):
        pssa_all = pssa_all.with_stage(stage, op="xvol_pssa")
    return {CONV: spec, PSSA3: spec.with_stage(3, op="xvol_pssa"), PSSA_ALL: pssa_all}


def build(name: str, tiny: bool) -> nn.Module:
    if name == TORCHVISION:
        return torchvision.models.resnet50(num_classes=NUM_CLASSES)
    return build_classifier(specs(tiny)[name], NUM_CLASSES)


class Trainer:
    """A bare bf16 channels-last training loop of one model on one device-resident batch."""

    def __init__(self, model: nn.Module, device: torch.device, batch: int, size: int, compiled: bool) -> None:
        self.device = device
        self.model = model.to(device, memory_format=torch.channels_last).train()
        self.forward = torch.compile(self.model) if compiled else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        gen = torch.Generator(device=device).manual_seed(0)
        self.images = torch.randn(batch, 3, size, size, device=device, generator=gen).contiguous(
            memory_format=torch.channels_last)
        self.labels = torch.randint(0, NUM_CLASSES, (batch,), device=device, generator=gen)

    def steps(self, n: int) -> None:
        for _ in range(n):
            bf16_step(self.forward, self.optimizer, self.images, self.labels)

    def images_per_s(self, n: int) -> float:
        return n * len(self.labels) / event_seconds(lambda: self.steps(n), self.device)


def eager(args, batch: int, size: int, steps: int, repeats: int) -> None:
    names = [TORCHVISION, CONV, PSSA3, PSSA_ALL]
    table = StepTable("5. Training throughput, eager (bf16, channels-last)", ["model", "images/s (median)",
                      "min to max", "peak memory MiB"],
                      f"Batch {batch} of {size} px, SGD momentum, {steps} steps per repeat after 3 warm-up steps, "
                      f"{repeats} interleaved repeats; {args.device}.", args.out)
    runs, memory = {}, {}
    for name in names:
        torch.manual_seed(0)
        runs[name] = Trainer(build(name, args.tiny), args.device, batch, size, compiled=False)
        runs[name].steps(3)
        reset_peak(args.device)
        runs[name].steps(1)
        memory[name] = peak_memory_mib(args.device)
    samples = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            samples[name].append(runs[name].images_per_s(steps))
    for name in names:
        table.add([name, f"{statistics.median(samples[name]):.0f}",
                   f"{min(samples[name]):.0f} to {max(samples[name]):.0f}", f"{memory[name]:.0f}"])
    for a, b, target in ((CONV, TORCHVISION, 0.95), (PSSA3, CONV, 0.85), (PSSA_ALL, CONV, None)):
        ratio = statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))
        verdict = "reported" if target is None else f"target >= {target}: {'met' if ratio >= target else 'MISSED'}"
        table.add([f"ratio {a} / {b}", f"{ratio:.3f}", verdict, ""])


def compiled(args, batch: int, size: int, steps: int) -> None:
    table = StepTable("6. Training throughput, torch.compile (inductor; bf16, channels-last)",
                      ["model", "compile + 2 steps s", "images/s", "peak memory MiB"],
                      f"Batch {batch} of {size} px; {steps} timed steps after the compiling ones; models in "
                      f"this order until the step's limit; {args.device}.", args.out)
    for name in (CONV, TORCHVISION, PSSA3, PSSA_ALL):
        torch.manual_seed(0)
        run = Trainer(build(name, args.tiny), args.device, batch, size, compiled=True)
        start = time.perf_counter()
        run.steps(2)
        sync(args.device)
        compile_s = time.perf_counter() - start
        reset_peak(args.device)
        speed = run.images_per_s(steps)
        table.add([name, f"{compile_s:.1f}", f"{speed:.0f}", f"{peak_memory_mib(args.device):.0f}"])
        del run
        torch._dynamo.reset()


class _EventTimer(Callback):
    """A `Stopwatch` around the batches after the first `warmup` of one epoch."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.watch, self.seconds = warmup, Stopwatch(device), 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.watch.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            self.seconds = self.watch.stop()


def bare_loop(model: nn.Module, loader: DataLoader, device: torch.device, warmup: int) -> float:
    """Seconds (`Stopwatch`) of the batches after the first `warmup`: transfer, bf16 forward, backward, SGD."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    watch = Stopwatch(device)
    for i, (images, labels) in enumerate(loader):
        if i == warmup:
            watch.start()
        images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        bf16_step(model, optimizer, images, labels.to(device, non_blocking=True))
    return watch.stop()


def loops(args, batch: int, size: int, steps: int, repeats: int) -> None:
    warmup = 3
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn((warmup + steps) * batch, 3, size, size, generator=gen),
                         torch.randint(0, NUM_CLASSES, ((warmup + steps) * batch,), generator=gen))
    loader = DataLoader(data, batch_size=batch, pin_memory=args.device.type == "cuda")
    spec = specs(args.tiny)[CONV]
    table = StepTable("7. Lightning loop against a bare loop (resnet50 all-conv, bf16-mixed, channels-last)",
                      ["loop", "images/s (median)", "min to max"],
                      f"Batch {batch} of {size} px from a pinned DataLoader, {steps} timed steps after {warmup}, "
                      f"{repeats} interleaved repeats; {args.device}.", args.out)
    samples: dict[str, list[float]] = {"bare": [], "Lightning": []}
    for _ in range(repeats):
        torch.manual_seed(0)
        model = build_classifier(spec, NUM_CLASSES).to(args.device, memory_format=torch.channels_last)
        samples["bare"].append(batch * steps / bare_loop(model, loader, args.device, warmup))
        task = ClassificationTask(to_dict(spec), NUM_CLASSES, to_dict(OPTIM))
        task.prepare_network(channels_last=True)
        timer = _EventTimer(warmup, args.device)
        L.Trainer(max_epochs=1, accelerator=args.device.type, devices=1, precision="bf16-mixed", logger=False,
                  callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0).fit(task, loader)
        samples["Lightning"].append(batch * steps / timer.seconds)
    for name, values in samples.items():
        table.add([name, f"{statistics.median(values):.0f}", f"{min(values):.0f} to {max(values):.0f}"])
    ratio = statistics.median(a / b for a, b in zip(samples["Lightning"], samples["bare"], strict=True))
    table.add(["ratio Lightning / bare", f"{ratio:.3f}", "target >= 0.95: " + ("met" if ratio >= 0.95 else "MISSED")])


def main() -> None:
    args = step_args(__doc__, modes=("compiled", "loops"))
    configure(args.device)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    batch, size, steps, repeats = (4, 32, 2, 2) if args.tiny else (128, 224, 8, 3)
    if args.compiled:
        compiled(args, batch, size, steps)
    elif args.loops:
        loops(args, 64 if not args.tiny else batch, size, steps, repeats)
    else:
        eager(args, batch, size, steps, repeats)


if __name__ == "__main__":
    main()
