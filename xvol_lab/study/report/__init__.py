"""Reports of a study: tables (pandas DataFrames), plots (PNG) and the report folder.

    data = load_study_data("stage_search")        # the study file + its storage
    ablation_table(data)                           # one DataFrame per table
    write_report(data, Path("runs/stage_search/report"), "md")
"""

from xvol_lab.study.report.source import StudyData, load_study_data
from xvol_lab.study.report.tables import (
    ablation_table,
    importance_table,
    pareto_table,
    stage_effects_table,
    trials_table,
)
from xvol_lab.study.report.writer import FORMATS, render_table, write_report

__all__ = ["FORMATS", "StudyData", "ablation_table", "importance_table", "load_study_data", "pareto_table",
           "render_table", "stage_effects_table", "trials_table", "write_report"]
