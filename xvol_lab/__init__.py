"""xvol_lab: an experiment lab for X-volution (Chen, Wang, Ni, arXiv:2106.02253).

The operator exports are imported on first use (xvol_lab/lazy.py), so that the command line's
help does not import torch.
"""

from xvol_lab.lazy import lazy_exports

__all__ = ["OPS", "create_op", "reparameterize"]
__version__ = "0.1.0"
__getattr__, __dir__ = lazy_exports(__name__, {"ops": __all__})
