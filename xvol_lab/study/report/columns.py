"""The column names of the report's frames and tables, in one place.

The first group names the columns of `xvol_lab.study.report.frame.seed_frame` (one row per trial
and seed); the second the display columns of the tables in `xvol_lab.study.report.tables`.
"""

from __future__ import annotations

from xvol_lab.study.config import FLOPS_G, LATENCY_BATCH_MS, LATENCY_DEVICE, LATENCY_MS, PARAMS_M
from xvol_lab.study.space_config import STAGES

# Columns of the seed frame (one row per trial and seed).
TRIAL, CONFIGURATION, SEED, PAIR = "trial", "configuration", "seed", "paired seed"
ROLE, CHANGED = "control", "changed stages"  # a control's role; the stages a configuration changes
ALL_CONV = "all_conv"  # whether the configuration is the all-conv baseline
DEVICE = "latency device"
STAGE_OPS = tuple(f"stage{i} op" for i in STAGES)
COSTS = (PARAMS_M, FLOPS_G, LATENCY_MS, LATENCY_BATCH_MS)
LATENCIES = (LATENCY_MS, LATENCY_BATCH_MS)
DEVICE_ATTR = LATENCY_DEVICE  # user attr: the device the latency was measured on

# Display columns of the tables.
PARAMS, FLOPS, GMACS = "params (M)", "GFLOPs (2×MAC)", "GMACs"
LATENCY = "latency b1 (ms)"
EPOCHS, BEST_EPOCH = "epochs", "best epoch"
WALL = "wall time (s)"
STAGE_COLUMNS = tuple(f"stage{i}" for i in STAGES)
# Objectives the study measures, by the column that shows them.
MEASURED_COLUMNS = {PARAMS_M: PARAMS, LATENCY_MS: LATENCY, FLOPS_G: FLOPS}
