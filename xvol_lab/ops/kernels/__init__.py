"""The kernels behind the operators: the `xvol::` op schemas, their CPU (C++) and CUDA (Triton) backends
and the choice between them, the 1x1 convolution of the q/k/v projections, and the autograd function of
the fused PSSA layer.

- schemas.py: the `xvol::` op schemas and fake implementations; imported here, first, so that every
  module of this package (and every user of `xvol`) finds the ops defined.
- backends.py: builds and loads the C++ extension (pssa_cpu.cpp, conv1x1_cpu.cpp, cpu_vec.h), loads
  the Triton kernels (pssa_triton.py), and picks the backend for a device and dtype.
- conv1x1.py: `xvol::conv1x1` dispatch and autograd; projection.py: the q/k/v projection built on it.
- pssa_autograd.py: the fused PSSA layer's autograd function (projection + kernel, little saved).
"""

from xvol_lab.ops.kernels.schemas import xvol

__all__ = ["xvol"]
