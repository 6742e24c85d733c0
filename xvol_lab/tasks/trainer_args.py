"""The `lightning.Trainer` arguments a run config may pass beyond the ones `TrainerConfig` declares:
any argument of ``lightning.Trainer.__init__``, typed as its annotation types it, except those the
lab sets itself (`LAB_SET`, each with the reason).

Lightning is imported only when a config has such an argument, so that reading a config stays light.
"""

from __future__ import annotations

import functools
import inspect
import operator
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

from xvol_lab.errors import ConfigError
from xvol_lab.schema import check_value

# Trainer arguments `xvol_lab.tasks.runner.build_trainer` sets, and why a config may not.
LAB_SET = {
    "callbacks": "the lab sets its own (checkpoints, epoch history, preemption, learning rate, progress)",
    "logger": "the lab logs to metrics.csv and tb/ in the run folder",
    "default_root_dir": "it is the run folder (--run-dir)",
    "enable_checkpointing": "best.ckpt and last.ckpt are the lab's checkpoints",
    "enable_progress_bar": "the lab shows its own progress (`lab.py train`, the study's live panel)",
    "enable_model_summary": "the lab shows the summary with its own progress",
    "plugins": "the lab sets the cluster plugins (SLURM)",
    "use_distributed_sampler": "the lab's training loaders split themselves across processes",
    "barebones": "the lab needs its logger, checkpoints and callbacks",
}
_PLAIN = (int, float, bool, str, type(None), Any)


def _settable(tp: Any) -> Any:
    """The part of annotation `tp` a YAML value can take (None: none, e.g. a Profiler object)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [o for o in (_settable(a) for a in typing.get_args(tp)) if o is not None]
        return functools.reduce(operator.or_, options) if options else None
    if origin is Literal or tp in _PLAIN or (origin is dict and typing.get_args(tp)[:1] == (str,)):
        return tp
    return None


def trainer_annotations() -> dict[str, Any]:
    """Each keyword argument of `lightning.Trainer` with its annotation."""
    import lightning.pytorch as L

    hints = typing.get_type_hints(L.Trainer.__init__)
    return {name: hints.get(name, Any) for name, p in inspect.signature(L.Trainer.__init__).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


def check_trainer_args(args: Mapping[str, Any]) -> dict[str, Any]:
    """`args` checked against `lightning.Trainer`'s signature and typed by its annotations; ValueError
    naming the first argument that is not one, is set by the lab, or has a value of another type."""
    if not args:
        return {}
    annotations = trainer_annotations()
    out = {}
    for name, value in args.items():
        if name in LAB_SET:
            raise ValueError(f"{name}: set by the lab, not by a config: {LAB_SET[name]}")
        if name not in annotations:
            raise ValueError(f"{name}: unknown key; expected a field of the trainer section or an argument of "
                             "lightning.Trainer (see its documentation)")
        settable = _settable(annotations[name])
        if settable is None:
            raise ValueError(f"{name}: lightning.Trainer takes {annotations[name]}, which a config cannot give")
        try:
            out[name] = check_value(settable, value, name)
        except ConfigError as err:
            raise ValueError(str(err)) from None
    return out


__all__ = ["LAB_SET", "check_trainer_args", "trainer_annotations"]
