"""Training throughput and peak memory; writes the "Training throughput" section of BENCHMARKS.md.

    python benchmarks/train.py [--quick] [--device cuda] [--no-write]

Side by side in one run (interleaved repeats; a ratio is the median of the per-repeat ratios):
  - xvol_lab resnet18 with every stage 'conv' against torchvision's resnet18 (target >= 0.95),
  - the Lightning loop (`ClassificationTask`, as `fit` trains it) against a bare PyTorch loop on the
    same model, optimiser, schedule and data (target >= 0.95),
  - resnet18 with 'xvol_pssa' in stage 3 against all-conv (target >= 0.90),
  - the Lightning loop with `trainer.channels_last` and with `trainer.compile` (inductor), all-conv and
    xvol_pssa stage 3, against the eager contiguous Lightning loop (reported; `--no-compile` skips the
    compiled variants, whose first steps compile).
Memory: the activations autograd saves for backward (exact, allocator-independent), and the peak
memory of training: on CUDA `torch.cuda.max_memory_allocated` above the model and data; on CPU the
growth of the peak resident set size (VmHWM, Linux) over a few steps, each variant in a fresh process.
Time is wall time on CUDA and process CPU time on CPU (one thread by default), so that a busy shared
machine does not distort the ratios. Everything runs on the `--device` given (cuda:N included); both
loops synchronise that device once at the start and once at the end of the timed steps.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning.pytorch as L
import torch
import torch.nn.functional as F
import torchvision
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import (  # noqa: E402
    cpu_clock,
    cuda_peak_mib,
    device_name,
    markdown_table,
    publish,
    saved_activation_mib,
    sync,
)

from xvol_lab.allocator import keep_freed_memory  # noqa: E402
from xvol_lab.models import BackboneSpec, build_classifier  # noqa: E402
from xvol_lab.models.cost import EXTRA_FLOPS  # noqa: E402
from xvol_lab.schema import to_dict  # noqa: E402
from xvol_lab.tasks.classification import ClassificationTask  # noqa: E402
from xvol_lab.tasks.config import OptimConfig  # noqa: E402
from xvol_lab.tasks.optim import build_optimizer, build_scheduler  # noqa: E402

NUM_CLASSES = 10
OPTIM = OptimConfig(name="sgd", lr=0.01, warmup_epochs=0.0)
CONV = BackboneSpec.preset("resnet18")  # imagenet stem, full width
PSSA3 = CONV.with_stage(3, op="xvol_pssa")


def _task(spec: BackboneSpec, channels_last: bool = False,
          compile_backend: str | None = None) -> ClassificationTask:
    """A ClassificationTask executing as `trainer.channels_last` / `trainer.compile` make `fit` run it."""
    task = ClassificationTask(to_dict(spec), NUM_CLASSES, to_dict(OPTIM))
    task.prepare_network(channels_last=channels_last, compile_backend=compile_backend)
    return task


VARIANTS = {  # name -> (model builder, loop)
    "torchvision resnet18": (lambda: torchvision.models.resnet18(num_classes=NUM_CLASSES), "bare"),
    "resnet18 all-conv": (lambda: build_classifier(CONV, NUM_CLASSES), "bare"),
    "resnet18 all-conv, Lightning loop": (lambda: _task(CONV), "lightning"),
    "resnet18 xvol_pssa stage 3": (lambda: build_classifier(PSSA3, NUM_CLASSES), "bare"),
    "resnet18 xvol_pssa stage 3, Lightning loop": (lambda: _task(PSSA3), "lightning"),
    "resnet18 all-conv, Lightning, channels_last": (lambda: _task(CONV, channels_last=True), "lightning"),
    "resnet18 xvol_pssa stage 3, Lightning, channels_last": (lambda: _task(PSSA3, channels_last=True),
                                                             "lightning"),
}
COMPILED = {
    "resnet18 all-conv, Lightning, compiled": (lambda: _task(CONV, compile_backend="inductor"), "lightning"),
    "resnet18 xvol_pssa stage 3, Lightning, compiled": (lambda: _task(PSSA3, compile_backend="inductor"),
                                                        "lightning"),
}


def make_loader(batch: int, size: int, steps: int) -> DataLoader:
    """`steps` batches of random images and labels, the same for every variant."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch * steps, 3, size, size, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (batch * steps,), generator=gen)
    return DataLoader(TensorDataset(images, labels), batch_size=batch, shuffle=False)


def bare_loop(model: nn.Module, loader: DataLoader, device: torch.device, warmup: int) -> float:
    """Seconds for the batches after the first `warmup`: forward, cross-entropy, backward, SGD, schedule."""
    model.to(device).train()
    optimizer = build_optimizer(model, OPTIM)
    scheduler = build_scheduler(optimizer, OPTIM, len(loader), 1)
    start = 0.0
    for i, (images, labels) in enumerate(loader):
        if i == warmup:
            sync(device)
            start = cpu_clock(device)()
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()
        scheduler.step()
    sync(device)
    return cpu_clock(device)() - start


class _Timer(Callback):
    """Times the batches after the first `warmup`, synchronising the device only at both ends (as the
    bare loop does), not after every batch."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        self.warmup, self.device, self.start, self.end = warmup, device, 0.0, 0.0
        self.clock = cpu_clock(device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            sync(self.device)
            self.start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == trainer.num_training_batches - 1:
            sync(self.device)
            self.end = self.clock()


def lightning_loop(task: ClassificationTask, loader: DataLoader, device: torch.device, warmup: int) -> float:
    """Seconds for the batches after the first `warmup` of one `Trainer.fit` epoch (no validation)."""
    timer = _Timer(warmup, device)
    devices = [device.index] if device.type == "cuda" and device.index is not None else 1
    trainer = L.Trainer(max_epochs=1, accelerator=device.type, devices=devices, logger=False,
                        callbacks=[timer], enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0)
    trainer.fit(task, train_dataloaders=loader)
    return timer.end - timer.start


def runner(name: str, device: torch.device, loader: DataLoader, warmup: int) -> Callable[[], float]:
    build, loop = {**VARIANTS, **COMPILED}[name]
    model = build()
    return lambda: (lightning_loop if loop == "lightning" else bare_loop)(model, loader, device, warmup)


def peak_memory_mib(name: str, device: torch.device, batch: int, size: int) -> float:
    """Training memory above the built model and data, over 4 steps (see the module docstring)."""
    if device.type == "cuda":
        return cuda_peak_mib(runner(name, device, make_loader(batch, size, 4), 1), device)
    out = subprocess.run([sys.executable, __file__, "--memory-of", name, "--batch", str(batch),
                          "--size", str(size), "--threads", str(torch.get_num_threads())],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["mib"]


def activation_mib(name: str, images: torch.Tensor, labels: torch.Tensor) -> float:
    """MiB autograd saves for backward in one training forward of a fresh `name` model (on CPU)."""
    model = VARIANTS[name][0]().train()
    model = model.model if isinstance(model, ClassificationTask) else model
    return saved_activation_mib(lambda: F.cross_entropy(model(images), labels))


def training_gflops(name: str, images: torch.Tensor, labels: torch.Tensor) -> float:
    """GFLOPs of one training step's forward and backward (`xvol_lab.models.cost` formulas)."""
    model = VARIANTS[name][0]().to(images.device).train()
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOPS)
    with counter:
        F.cross_entropy(model(images), labels).backward()
    return counter.get_total_flops() / 1e9


def _peak_rss_mib(reset: bool = False) -> float:
    """Peak resident set size of this process (VmHWM), optionally reset to the current size first.

    Not `ru_maxrss`: after fork + exec that starts at the parent's peak, hiding a child's growth.
    """
    if reset:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS to the current RSS
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) / 1024


def _memory_child(name: str, batch: int, size: int) -> None:
    """In a fresh process: peak RSS growth while training `name` for 4 steps (printed as JSON)."""
    device = torch.device("cpu")
    run = runner(name, device, make_loader(batch, size, 4), 1)
    base = _peak_rss_mib(reset=True)
    run()
    print(json.dumps({"mib": _peak_rss_mib() - base}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 16 CPU, 64 CUDA)")
    parser.add_argument("--size", type=int, default=None, help="image size (default 64 CPU, 224 CUDA)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU intra-op threads (default 1: steady figures on a shared machine)")
    parser.add_argument("--no-write", action="store_true", help="print, do not touch BENCHMARKS.md")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variants")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)  # internal: one CPU memory measurement
    args = parser.parse_args()
    keep_freed_memory()  # as the lab's processes do
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    batch = args.batch or (64 if device.type == "cuda" else 16)
    size = args.size or (224 if device.type == "cuda" else 64)
    torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if args.memory_of:
        _memory_child(args.memory_of, batch, size)
        return
    warmup, steps, repeats = (2, 4, 3) if args.quick else (3, 15, 5)
    torch.manual_seed(0)
    loader = make_loader(batch, size, warmup + steps)
    variants = {**VARIANTS, **({} if args.no_compile else COMPILED)}
    runs = {name: runner(name, device, loader, warmup) for name in variants}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order each repeat
            samples[name].append(steps * batch / runs[name]())
    speed = {name: statistics.median(v) for name, v in samples.items()}
    memory = {name: peak_memory_mib(name, device, batch, size) for name in VARIANTS}  # not compiled ones
    images, labels = next(iter(loader))
    activations = {name: activation_mib(name, images, labels) for name in VARIANTS}

    def ratio(a: str, b: str) -> float:
        """Median over repeats of the ratio within each repeat (paired: both measured moments apart)."""
        return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

    conv, pssa3 = "resnet18 all-conv", "resnet18 xvol_pssa stage 3"
    ratios = [
        ("resnet18 all-conv / torchvision resnet18", ratio(conv, "torchvision resnet18"), 0.95),
        ("Lightning loop / bare loop (all-conv)", ratio(f"{conv}, Lightning loop", conv), 0.95),
        ("xvol_pssa stage 3 / all-conv", ratio(pssa3, conv), 0.90),
        ("xvol_pssa stage 3 / all-conv, Lightning loops", ratio(f"{pssa3}, Lightning loop",
                                                                f"{conv}, Lightning loop"), 0.90),
    ]
    for model in (conv, pssa3):
        for option in ("channels_last", "compiled"):
            if f"{model}, Lightning, {option}" in samples:
                ratios.append((f"{model.removeprefix('resnet18 ')}: {option} / eager contiguous (Lightning)",
                               ratio(f"{model}, Lightning, {option}", f"{model}, Lightning loop"), None))
    rows = [[name, f"{speed[name]:.1f}", f"{min(samples[name]):.1f} to {max(samples[name]):.1f}",
             f"{memory[name]:.0f}" if name in memory else "not measured (compiled)",
             f"{activations[name]:.1f}" if name in activations else "not measured (compiled)"]
            for name in variants]
    ratio_rows = [[label, f"{value:.3f}", "reported" if target is None else f">= {target}",
                   "" if target is None else ("met" if value >= target else "MISSED")]
                  for label, value, target in ratios]
    flops = {name: training_gflops(name, images, labels) for name in (conv, pssa3)}
    flop_note = (
        f"Work per training step (forward and backward FLOPs): all-conv {flops[conv]:.2f} G, xvol_pssa stage 3 "
        f"{flops[pssa3]:.2f} G, so at equal FLOP rates the throughput ratio would be "
        f"{flops[conv] / flops[pssa3]:.3f}. The extra work is the q/k/v projections (a third of each 3x3 "
        "convolution's FLOPs, more at the stride-2 first block, whose k and v run at its input's resolution) "
        "and the PSSA kernels; the measured ratio below that bound is the rate at which the projections, "
        "kernels and the second BatchNorm run next to oneDNN's 3x3 convolutions.")
    memory_note = ("peak CUDA allocation above model and data" if device.type == "cuda" else
                   "growth of peak RSS over 4 steps in a fresh process (includes optimiser state and "
                   "allocator slack; coarse, about +-10 MiB run to run)")
    memory_note += "; saved activations: the tensors autograd keeps for backward in one forward (exact)"
    body = "\n".join([
        f"Device: {device_name(device)}; torch {torch.__version__}, lightning {L.__version__}. "
        f"Batch {batch} of {size} px random images, {NUM_CLASSES} classes, imagenet stem, width 1.0; "
        f"SGD momentum 0.9; {steps} timed steps after {warmup} warm-up steps, {repeats} interleaved "
        f"repeats (order rotated); a ratio is the median of its per-repeat ratios. "
        f"Clock: {'wall time' if device.type == 'cuda' else 'process CPU time'}. Peak memory: {memory_note}.",
        "", markdown_table(["ratio", "value", "target", ""], ratio_rows), "", flop_note,
        "", markdown_table(["variant", "train images/s (median)", "min to max", "peak memory MiB",
                                "saved activations MiB"], rows),
    ])
    title = f"Training throughput (benchmarks/train.py, {device.type})"
    publish(title, body, write=not args.no_write)


if __name__ == "__main__":
    main()
