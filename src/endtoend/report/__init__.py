"""report.html: curves, tables and pictures drawn with matplotlib, opening offline.

    run.py          one training run (written by `fit` into its run directory)
    comparison.py   one comparison (written by `e2e compare`)
    page.py         what both pages share
"""

from endtoend.report.comparison import write_comparison_report
from endtoend.report.run import read_metrics, write_run_report

__all__ = ["read_metrics", "write_comparison_report", "write_run_report"]
