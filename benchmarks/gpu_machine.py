"""GPU check, step 1: the machine, and everything built once before the other steps: the C++ extension
(test collection and the CPU references need it) and a first Triton PSSA compile.

Starts this run's "GPU check" section of BENCHMARKS.md (device, driver, CUDA, Triton, torch versions).
"""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _gpu import StepTable, configure, start_section, step_args, sync, versions  # noqa: E402

from xvol_lab.ops import pssa_taps  # noqa: E402
from xvol_lab.ops.kernels import xvol  # noqa: E402
from xvol_lab.ops.kernels.backends import cpu_kernels_available, pssa_backend  # noqa: E402
from xvol_lab.ops.kernels.schemas import flat_taps  # noqa: E402


def main() -> None:
    args = step_args(__doc__)
    settings = configure(args.device)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    start_section(f"Run of {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {versions(args.device)}; "
                  f"{len(gpus)} GPU(s) visible{': ' + ', '.join(gpus) if gpus else ''}. Settings: {settings}. "
                  "Each step's table is written as it measures; a step stopped by its limit keeps its rows.",
                  args.out)
    table = StepTable("1. Build", ["what", "seconds", "result"],
                      "Built once, before the steps that need it.", args.out)
    start = time.perf_counter()
    built = cpu_kernels_available()
    table.add(["C++ extension (JIT build or load from cache)", f"{time.perf_counter() - start:.1f}",
               "built" if built else "FAILED: composite path"])
    start = time.perf_counter()
    backend = pssa_backend(args.device, torch.bfloat16)
    x = torch.randn(2, 64, 8, 8, device=args.device, dtype=torch.bfloat16)
    xvol.pssa_fwd(x, x, x, None, 1, flat_taps(pssa_taps(1, 8)), 1)
    sync(args.device)
    table.add([f"PSSA kernels on {args.device.type} (import, first compile)", f"{time.perf_counter() - start:.1f}",
               f"backend {backend}"])


if __name__ == "__main__":
    main()
