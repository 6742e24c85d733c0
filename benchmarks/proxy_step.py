"""The ablations' network on one CPU thread, as their trials train it: one training step (forward,
backward, AdamW) of each stage-3 operator in the contiguous and the channels-last memory format
(`trainer.channels_last`); writes the "Ablation network" section of BENCHMARKS.md.

The network is op_ablation's base (width 0.125, small stem, 40 px, batch 64) with stage 3 set to each
operator of its grid, and its positive control (1x1 convolutions in stages 3-4); each ratio is measured side by
side in one run (interleaved repeats, process CPU time, medians).
"""

from __future__ import annotations

import logging
import statistics
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _report import cpu_clock, device_name, markdown_table, publish, smoke_args  # noqa: E402

from xvol_lab.allocator import keep_freed_memory  # noqa: E402
from xvol_lab.models import build_classifier  # noqa: E402
from xvol_lab.study.config import StudyConfig, load_study_config  # noqa: E402
from xvol_lab.study.controls import POSITIVE, apply_params  # noqa: E402

STUDY = "op_ablation"
CONTROL = "positive control (1x1 in stages 3-4)"
OPERATORS = ("conv", "sa", "pssa", "xvol_sa", "xvol_pssa", CONTROL)


def training_step(config: StudyConfig, op: str, channels_last: bool) -> Callable[[], object]:
    """One AdamW training step of op_ablation's network with `op` in stage 3 (or its positive control's
    network), in the given memory format."""
    data, base = config.base.data, config.baseline_spec
    assert base is not None
    spec = (config.controls.spec(POSITIVE, base) if op == CONTROL
            else apply_params(base, {"stage3.op": op}))
    torch.manual_seed(0)
    model = build_classifier(spec, data.num_classes)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    images = torch.randn(data.batch_size, 3, data.image_size, data.image_size).contiguous(memory_format=fmt)
    labels = torch.randint(0, data.num_classes, (data.batch_size,))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step() -> object:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        return loss
    return step


def main() -> None:
    args = smoke_args(__doc__, "fewer steps and repeats (smoke run)")
    keep_freed_memory()  # as the lab's processes do
    torch.set_num_threads(1)  # as the ablations' trials train (base.trainer.threads: 1)
    logging.getLogger("xvol_lab").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    steps, repeats = (2, 3) if args.quick else (5, 7)
    _, config = load_study_config(STUDY)
    steps_of = {(op, cl): training_step(config, op, cl) for op in OPERATORS for cl in (False, True)}
    clock = cpu_clock("cpu")
    samples: dict[tuple[str, bool], list[float]] = {key: [] for key in steps_of}
    for fn in steps_of.values():
        fn()  # warm-up: oneDNN primitive creation, allocator
    keys = list(steps_of)
    for r in range(repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:  # rotate the order each repeat
            start = clock()
            for _ in range(steps):
                steps_of[key]()
            samples[key].append((clock() - start) / steps)
    rows = []
    for op in OPERATORS:
        flat, last = samples[(op, False)], samples[(op, True)]
        ratio = statistics.median(a / b for a, b in zip(flat, last, strict=True))
        rows.append([op, f"{1000 * statistics.median(flat):.0f}", f"{1000 * statistics.median(last):.0f}",
                     f"{ratio:.2f}"])
    data = config.base.data
    body = "\n".join([
        f"Device: {device_name('cpu')}; torch {torch.__version__}. {STUDY}'s network (width "
        f"{config.base.model.width_mult}, {config.base.model.stem} stem) on {data.image_size} px images, batch "
        f"{data.batch_size}, {data.num_classes} classes, with stage 3 set to each operator; one training step "
        f"(forward, backward, AdamW); {steps} steps per sample after a warm-up step, {repeats} interleaved "
        "repeats (order rotated); process CPU time; a ratio is the median of its per-repeat ratios.",
        "", markdown_table(["stage 3", "contiguous ms/step", "channels_last ms/step",
                            "contiguous / channels_last"], rows), "",
        "The ablations set `trainer.channels_last: true` from these figures: on one thread and at these "
        "widths (8-64 channels) oneDNN's channels-last convolutions win, where at width 1.0 "
        "(Training throughput above) the two formats are level.",
    ])
    publish("Ablation network on one thread (benchmarks/proxy_step.py, cpu)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
