"""Package exports imported on first use (PEP 562 module ``__getattr__``).

A package lists what it offers without importing it, so that importing one light module of the
package (a config dataclass, the metric names) does not import the heavy ones beside it
(Lightning, Optuna): ``from xvol_lab.tasks.metrics import VAL_ACC1`` stays cheap, while
``from xvol_lab.tasks import fit`` still works.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, Iterable[str]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for `package`; `exports` maps each submodule (relative to `package`)
    to the names of it that the package exports."""
    where = {name: f"{package}.{module}" for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)  # later lookups are plain attribute reads
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *where})

    return __getattr__, __dir__
