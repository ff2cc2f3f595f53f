"""The label tree and its probabilities: :class:`Hierarchy` (graph work once, then index tensors) and
:class:`TreeProbabilities` (marginals of HRN's tree distribution, the top-down path)."""

from hrn.tree.hierarchy import Hierarchy, HierarchyError
from hrn.tree.probabilities import (
    SOURCES,
    TREE_SCORES,
    TreeProbabilities,
    TreeScores,
    check_source,
    check_tree_scores,
)

__all__ = [
    "Hierarchy",
    "HierarchyError",
    "SOURCES",
    "TREE_SCORES",
    "TreeProbabilities",
    "TreeScores",
    "check_source",
    "check_tree_scores",
]
