"""Lightning tasks and the training runner: `fit(RunConfig, run_dir)` trains one model.

The exports below are imported on first use (`xvol_lab.lazy`): importing a light module of this
package, such as the metric names (`xvol_lab.tasks.metrics`), does not import Lightning.
"""

from xvol_lab.lazy import lazy_exports

_EXPORTS = {
    "errors": ["NonFiniteLossError"],
    "export": ["export_deploy", "load_deploy"],
    "metrics": ["TRAIN_ACC1", "TRAIN_LOSS", "VAL_ACC1", "VAL_ACC5", "VAL_LOSS"],
    "registry": ["MONITOR", "TASKS", "task_record"],
    "runner": ["fit"],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = sorted(name for names in _EXPORTS.values() for name in names)
