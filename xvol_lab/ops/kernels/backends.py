"""The backends of the `xvol::` ops (schemas.py) and which one runs: the `xvol::pssa_fwd` / `xvol::pssa_bwd`
fused PSSA kernels (and, on CPU, their `_phased` forms for strided layers) and `xvol::conv1x1`.

One pass per tile computes the logits, the softmax over the valid taps and the aggregation; the backward
recomputes the products from q, k, v instead of saving T shifted copies. Backends:
- "cpu": a C++ extension (pssa_cpu.cpp, and conv1x1_cpu.cpp for the projections; OpenMP via ATen's
  parallel_for), JIT-built once and cached under torch's extensions directory; float32 and float64.
- "triton": Triton kernels on CUDA (pssa_triton.py); float32, float16, bfloat16 (float32 accumulation).
- "torch": the composite path of `xvol_lab.ops.attention_functions` (every other device or dtype, or when a
  kernel cannot be built: logged once, never an error).
`pssa_backend(device, dtype)` picks the fastest one available; layers call it, so no flag is needed.
`kernel_record()` says which backends this process ran and which kernels failed to build (a run's
environment fingerprint, `xvol_lab.tasks.fingerprint`).
"""

from __future__ import annotations

import hashlib
import logging
import sys
from pathlib import Path

import torch
from torch import Tensor

log = logging.getLogger(__name__)

CPU_SOURCES = [Path(__file__).with_name(name) for name in ("pssa_cpu.cpp", "conv1x1_cpu.cpp")]
CPU_HEADER = Path(__file__).with_name("cpu_vec.h")
CPU_DTYPES = (torch.float32, torch.float64)
CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _cpu_build_flags() -> tuple[str, list[str]]:
    """Extension name and compiler flags for this CPU's vector ISA. The name keys torch's build cache:
    it carries the ISA (a cache shared between machines never hands an AVX-512 build to a CPU without
    it) and a hash of the source, the flags and the environment (``sys.prefix`` and torch's version:
    checkouts of different versions, or virtual environments sharing one cache, never rebuild over
    each other's build)."""
    capability = torch.backends.cpu.get_cpu_capability()  # "DEFAULT", "AVX2", "AVX512", ...
    isa = {"AVX2": ["-mavx2", "-mfma"], "AVX512": ["-mavx512f", "-mavx512dq", "-mavx2", "-mfma"]}
    flags = ["-O3", "-fopenmp", "-ffp-contract=fast", *isa.get(capability, [])]
    code = b"".join(path.read_bytes() for path in [*CPU_SOURCES, CPU_HEADER])
    environment = f"{sys.prefix}\0{torch.__version__}"
    digest = hashlib.sha256(code + " ".join(flags).encode() + environment.encode()).hexdigest()[:12]
    return f"xvol_pssa_cpu_{capability.lower()}_{digest}", flags


_AVAILABLE: dict[str, bool] = {}  # backend -> usable, decided once per process
_FAILED: dict[str, str] = {}  # backend -> why its kernels did not build or load
_RAN: set[str] = set()  # the backends `pssa_backend` chose in this process (eager calls)


@torch.compiler.assume_constant_result  # torch.compile: decided outside the graph, a constant in it
def cpu_kernels_available() -> bool:
    """Build (first call per machine, cached on disk) and load the C++ kernels; False, with one logged
    warning, when that fails (no compiler, no write access)."""
    if "cpu" not in _AVAILABLE:
        _AVAILABLE["cpu"] = _load_cpu_kernels()
    return _AVAILABLE["cpu"]


def _load_cpu_kernels() -> bool:
    from torch.utils.cpp_extension import load

    name, flags = _cpu_build_flags()
    try:
        load(name=name, sources=[str(path) for path in CPU_SOURCES], extra_cflags=flags,
             is_python_module=False, verbose=False)
    except Exception as err:  # noqa: BLE001 - any build failure means: use the composite path
        why = f"{type(err).__name__}: {str(err).strip().splitlines()[-1] if str(err).strip() else ''}"
        log.warning("PSSA C++ kernels unavailable (%s); using the composite torch path", why)
        _FAILED["cpu"] = why
        return False
    return True


@torch.compiler.assume_constant_result
def triton_kernels_available() -> bool:
    """Triton importable (it ships with the CUDA build of torch) and a CUDA device present."""
    if "triton" not in _AVAILABLE:
        _AVAILABLE["triton"] = _load_triton_kernels()
    return _AVAILABLE["triton"]


def _load_triton_kernels() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        from xvol_lab.ops.kernels import pssa_triton  # noqa: F401 - registers the CUDA kernels
    except Exception as err:  # noqa: BLE001 - e.g. no triton: use the composite path
        log.warning("PSSA Triton kernels unavailable (%s: %s); using the composite torch path",
                    type(err).__name__, err)
        _FAILED["triton"] = f"{type(err).__name__}: {err}"
        return False
    return True


def pssa_backend(device: torch.device | str, dtype: torch.dtype) -> str:
    """Which PSSA implementation runs for tensors of `dtype` on `device`: "cpu", "triton" or "torch"."""
    device = torch.device(device)
    if device.type == "cpu" and dtype in CPU_DTYPES and cpu_kernels_available():
        name = "cpu"
    elif device.type == "cuda" and dtype in CUDA_DTYPES and triton_kernels_available():
        name = "triton"
    else:
        name = "torch"
    if not torch.compiler.is_compiling():  # a compiled graph keeps the choice made while tracing it
        _RAN.add(name)
    return name


def kernel_record() -> dict[str, object]:
    """What the `xvol::` kernels did in this process: ``ran`` (the PSSA backends chosen, sorted; under
    torch.compile, where the choice is made while tracing, the kernels that were loaded: "cpu" / "triton",
    "torch" where loading failed) and ``build_failed`` (backend -> why its kernels did not build)."""
    ran = set(_RAN) or {name if usable else "torch" for name, usable in _AVAILABLE.items()}
    return {"ran": sorted(ran), "build_failed": dict(_FAILED)}


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the q/k/v projections of `x` come out in (autocast's, when it is on for x's device)."""
    if torch.is_autocast_enabled(x.device.type) and x.dtype.is_floating_point:
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype

