#!/usr/bin/env bash
# GPU check: the CUDA paths that CPU tests cannot run, in <= 10 minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh [--write]      # from the repository root, virtual environment active
#
#  1. the machine: GPUs, torch, CUDA, Triton;
#  2. the Triton PSSA kernels against the composite reference on CUDA (float32, bf16; forward and
#     backward; stride 1/2, L 1-3, dirs 4/8), and one bf16-autocast training step of a PSSA network;
#  3. every `gpu`-marked test (`pytest -m gpu`: CUDA ops against the CPU reference, bf16 autocast keeps
#     bf16, the sa memory ceiling, latency, the 2-GPU tests skip themselves below 2 GPUs);
#  4. with 2 or more GPUs: a 2-process NCCL DDP training run through `lab.py train`;
#  5. the operator and training benchmarks with `--device cuda` (printed; `--write` also writes their
#     "cuda" sections of BENCHMARKS.md).
# Each step has its own time limit (one GPU: 30+120+150+180+90 s = 9.5 min at most; the DDP step adds
# 2 min with two GPUs); the script stops at the first failure or overrun. The training benchmark skips
# its torch.compile variants here (their compilation alone would take the budget).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WRITE=--no-write
[[ "${1:-}" == "--write" ]] && WRITE=""
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
step() { echo; echo "== $* ($(date +%T))"; }

step "1. machine"
timeout 30 "$PY" - <<'EOF'
import torch
assert torch.cuda.is_available(), "gpu_check: no CUDA device visible"
import triton
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, triton {triton.__version__}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}")
EOF

step "2. Triton PSSA kernels against the composite reference on CUDA"
timeout 120 "$PY" - <<'EOF'
import itertools

import torch

from xvol_lab.ops import create_op, pssa_taps
from xvol_lab.ops.attention_functions import pixel_shift_attention
from xvol_lab.ops.kernels.backends import pssa_backend
from xvol_lab.ops.kernels.schemas import flat_taps

assert pssa_backend("cuda", torch.bfloat16) == "triton", "the Triton kernels did not load"
torch.manual_seed(0)
for stride, shift, dirs, heads in itertools.product([1, 2], [1, 2, 3], [4, 8], [1, 2]):
    taps, c, h, w = pssa_taps(shift, dirs), 32, 19, 23
    ho, wo = -(-h // stride), -(-w // stride)
    q = torch.randn(2, c, ho, wo, device="cuda", dtype=torch.float64, requires_grad=True)
    k, v = (torch.randn(2, c, h, w, device="cuda", dtype=torch.float64, requires_grad=True) for _ in range(2))
    grad = torch.randn(2, c, ho, wo, device="cuda", dtype=torch.float64)
    ref = pixel_shift_attention(q, k, v, heads, taps, stride)
    ref_grads = torch.autograd.grad(ref, (q, k, v), grad)
    for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 3e-2)):
        args = [t.detach().to(dtype) for t in (q, k, v)]
        y = torch.ops.xvol.pssa_fwd(*args, None, heads, flat_taps(taps), stride)
        dq, dkv = torch.ops.xvol.pssa_bwd(grad.to(dtype), *args, heads, flat_taps(taps), stride)
        assert y.dtype == dtype and dq.dtype == dtype
        torch.testing.assert_close(y.double(), ref.detach(), atol=tol, rtol=tol)
        torch.testing.assert_close(dq.double(), ref_grads[0], atol=tol * 10, rtol=tol * 10)
        torch.testing.assert_close(dkv.double(), torch.cat(ref_grads[1:], 1), atol=tol * 10, rtol=tol * 10)
print("Triton kernels agree with the reference (float32 1e-5, bf16 3e-2; 24 option sets)")

net = torch.nn.Sequential(create_op("xvol_pssa", 64, 64), torch.nn.ReLU(), create_op("pssa", 64, 64, 2)).cuda()
x = torch.randn(16, 64, 56, 56, device="cuda")
with torch.autocast("cuda", dtype=torch.bfloat16):
    y = net(x)
y.float().square().mean().backward()
assert y.dtype == torch.bfloat16, y.dtype
assert all(torch.isfinite(p.grad).all() for p in net.parameters())
print("bf16 autocast training step: bf16 activations, finite gradients")
EOF

step "3. gpu-marked tests"
timeout 150 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/

GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if (( GPUS >= 2 )); then
    step "4. 2-process NCCL DDP run (lab.py train, xvol_pssa in stage 3, bf16-mixed)"
    TMP=$(mktemp -d)
    (cd "$TMP" && timeout 120 "$PY" "$OLDPWD/lab.py" train --devices 2 --strategy ddp --max-epochs 1 --no-progress \
        --set data.root="$TMP/data" data.image_size=32 data.num_train=512 data.num_val=101 data.batch_size=32 \
              model.stages.2.op=xvol_pssa trainer.accelerator=gpu trainer.precision=bf16-mixed)
    rm -rf "$TMP"
else
    step "4. NCCL DDP skipped: $GPUS GPU visible, 2 needed"
fi

step "5. benchmarks on CUDA"
timeout 180 "$PY" benchmarks/ops.py --device cuda --quick $WRITE
timeout 90 "$PY" benchmarks/train.py --device cuda --quick --no-compile $WRITE
step "gpu_check: all passed"
