"""What a study pays per seed besides training: writes the "Per-seed overhead" section of BENCHMARKS.md.

    python benchmarks/seed_overhead.py [--quick] [--no-write]

Every seed of a study trains in its own trial process (`xvol_lab.study.seeds`), so each one pays
the process start (importing torch, Lightning and the lab), its data set-up, and the process exit.
Measured side by side in one run, interleaved, medians over repeats:

- start: a child process that imports the trial module and exits at once (`os._exit`);
- data set-up of op_ablation's set (shapes-side, 4000 + 3000 images of 40 px; `--quick`: 400 + 300):
  every PNG decoded (before) against the decoded array kept beside the set (`xvol_lab.data.decoded`);
- exit: a child that imports the trial module and runs one training step of a small network, then
  returns from its main (the interpreter's clean-up of torch and Lightning; before) or leaves with
  `os._exit` as the trial process now does. The exit is the wall time from the child's last
  statement to its end, which the study process waits for before it starts the next seed.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from _report import device_name, markdown_table, publish, smoke_args  # noqa: E402

from xvol_lab.data import generate  # noqa: E402
from xvol_lab.data.generated import read_generated  # noqa: E402
from xvol_lab.data.images import DecodedImageDataset  # noqa: E402
from xvol_lab.study.config import load_study_config  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STUDY = "op_ablation"
CHILD = """
import os, sys, time
import torch
import xvol_lab.study.trial
{work}
sys.stdout.write(repr(time.time()))
sys.stdout.flush()
{leave}
"""
STEP = """
net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(16))
net(torch.randn(64, 3, 40, 40)).sum().backward()
"""


def child_seconds(work: str, leave: str) -> tuple[float, float]:
    """(wall seconds of the child process, seconds from its last statement to its end)."""
    code = CHILD.format(work=work, leave=leave)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    end_wall, end_epoch = time.perf_counter(), time.time()
    return end_wall - start, end_epoch - float(out.stdout)


def main() -> None:
    args = smoke_args(__doc__, "a tenth of the images, fewer repeats (smoke run)")
    logging.getLogger("xvol_lab").setLevel(logging.ERROR)
    repeats = 2 if args.quick else 5
    _, study = load_study_config(STUDY)
    data = study.base.data
    if args.quick:
        data = dataclasses.replace(data, num_train=data.num_train // 10, num_val=data.num_val // 10)
    with tempfile.TemporaryDirectory() as tmp:
        data = dataclasses.replace(data, root=tmp)
        folder = generate(data)
        samples = [s for split in ("train", "val") for s in read_generated(data).samples[split]]
        DecodedImageDataset(samples, cache=folder)  # the first process: decodes and keeps the array
        times: dict[str, list[float]] = {k: [] for k in ("start", "decoded", "kept", "exit", "_exit")}
        for _ in range(repeats):
            times["start"].append(child_seconds("", "os._exit(0)")[0])
            for key, cache in (("decoded", None), ("kept", folder)):
                start = time.perf_counter()
                DecodedImageDataset(samples, cache=cache)
                times[key].append(time.perf_counter() - start)
            times["exit"].append(child_seconds(STEP, "")[1])
            times["_exit"].append(child_seconds(STEP, "os._exit(0)")[1])
    med = {k: statistics.median(v) for k, v in times.items()}
    saved = med["decoded"] - med["kept"] + med["exit"] - med["_exit"]
    rows = [
        ["process start (imports)", f"{med['start']:.2f}", f"{med['start']:.2f}", "-"],
        [f"data set-up, {len(samples)} images", f"{med['decoded']:.2f}", f"{med['kept']:.3f}",
         f"{med['decoded'] / med['kept']:.0f}"],
        ["process exit", f"{med['exit']:.2f}", f"{med['_exit']:.3f}", f"{med['exit'] / med['_exit']:.0f}"],
    ]
    body = "\n".join([
        f"Device: {device_name('cpu')}. Wall seconds, medians of {repeats} interleaved repeats; data set "
        f"of {STUDY} ({data.name}, {data.image_size} px, {data.num_train} + {data.num_val} images).", "",
        markdown_table(["per seed", "before (s)", "now (s)", "before / now"], rows), "",
        f"Saved per seed: {saved:.1f} s, and the study's measurement of the trained network no longer "
        f"decodes the {data.num_val} validation images again. The process start ({med['start']:.1f} s) "
        "remains: each seed's process imports torch and Lightning anew.",
    ])
    publish("Per-seed overhead (benchmarks/seed_overhead.py, cpu)", body, write=not args.no_write)


if __name__ == "__main__":
    main()
