"""A run directory: metrics writer and sinks, log files, the run report and its plots, the run lock.

- ``metrics``: ``MetricsWriter`` (JSON lines, TensorBoard, W&B)
- ``logs``: reading the JSON-lines files; dropping records after a checkpoint on resume
- ``report``: ``write_report`` (report.html); ``heatmap``: its token-level advantage heatmap; ``plots``: its curves
- ``runlock``: one process per run directory
"""
