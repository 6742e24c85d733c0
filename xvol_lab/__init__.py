"""xvol_lab: an experiment lab for X-volution (Chen, Wang, Ni, arXiv:2106.02253)."""

from xvol_lab.ops import OPS, create_op, reparameterize

__all__ = ["OPS", "create_op", "reparameterize"]
__version__ = "0.1.0"
