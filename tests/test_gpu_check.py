"""benchmarks/gpu_check.sh without a GPU: its plan fits the 8-minute budget of one H100 and names scripts
that exist, and the figures a step measures reach BENCHMARKS.md row by row (a step stopped by its limit
keeps what it measured)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

import _gpu  # noqa: E402

PLAN_LINE = re.compile(r"^\s*(\d+)\.\s+(\d+) s  (.+): (\S+) (.+)$")


def plan() -> tuple[list[tuple[int, int, str, str]], str]:
    out = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--plan"], capture_output=True,
                         text=True, timeout=30, check=True, env={"PATH": "/usr/bin:/bin", "PYTHON": "python"})
    lines = out.stdout.strip().splitlines()
    steps = [(int(m[1]), int(m[2]), m[3], m[5]) for m in map(PLAN_LINE.match, lines[:-1]) if m]
    assert len(steps) == len(lines) - 1, out.stdout  # every line but the total is a step
    return steps, lines[-1]


def test_plan_lists_every_step_with_a_limit_adding_up_to_at_most_480_s():
    steps, total = plan()
    assert [n for n, *_ in steps] == list(range(1, len(steps) + 1))
    limits = [limit for _, limit, *_ in steps]
    assert all(limit > 0 for limit in limits) and sum(limits) <= 480
    assert total == f"total {sum(limits)} s of the 480 s budget (one GPU)"
    titles = " ".join(title for _, _, title, _ in steps)
    for measured in ("C++ extension build", "host syncs", "gpu-marked tests", "PSSA kernels against cuDNN",
                     "eager", "torch.compile", "Lightning loop against a bare loop", "deploy latency"):
        assert measured in titles
    assert steps[0][2].startswith("machine, C++ extension build")  # built first, once
    for _, _, _, command in steps:
        script = command.split()[0]
        assert script == "-m" or (REPO / script).is_file(), command


def test_unknown_argument_is_refused_with_exit_2():
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--plna"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "gpu_check.sh: unknown argument '--plna'; expected --plan or nothing")


def test_a_step_table_reaches_the_file_after_every_row(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## GPU check (benchmarks/gpu_check.sh)\n\nan old run\n\n"
                   "### 4. old\n\nold rows\n\n## Data loading (benchmarks/data.py, cpu)\n\nkept\n")
    _gpu.start_section("Run on H100, driver 1, CUDA 12, Triton 3", out)
    text = out.read_text()
    assert "an old run" not in text and "old rows" not in text and "kept" in text
    assert text.rstrip().endswith("Run on H100, driver 1, CUDA 12, Triton 3")  # the section is the last
    table = _gpu.StepTable("4. Kernels", ["shape", "ms"], "bf16.", out)
    table.add(["64x56x56", "0.10"])
    assert "| 64x56x56 | 0.10 |" in out.read_text()
    table.add(["128x28x28", "0.20"])
    with out.open("a") as f:  # what gpu_check.sh appends when the step ends
        f.write("\nStep 4 (kernels): ok after 3.0 s of its 50 s limit.\n")
    _gpu.StepTable("5. Train", ["model", "images/s"], "bf16.", out).add(["resnet50", "3000"])
    text = out.read_text()
    order = [text.index(s) for s in ("Run on H100", "| 64x56x56", "| 128x28x28", "Step 4 (kernels): ok",
                                     "### 5. Train", "| resnet50 | 3000 |")]
    assert order == sorted(order) and text.count("### 4. Kernels") == 1
