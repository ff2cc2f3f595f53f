"""Evaluation metrics of hierarchical classification (:mod:`~hrn.metrics.hierarchical`) and the files and tables
made from them (:mod:`~hrn.metrics.outputs`)."""

from hrn.metrics.hierarchical import HierarchicalMetrics, SampleRecords, ap_scores, level_predictions
from hrn.metrics.outputs import level_table

__all__ = ["HierarchicalMetrics", "SampleRecords", "ap_scores", "level_predictions", "level_table"]
