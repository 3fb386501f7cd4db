"""Measuring a visual memory: dataset readers, exact all-k scoring, pruning, the paper's experiments.

    >>> from eval import read_dataset, query_set, evaluate, write_report
    >>> ds = read_dataset("imagenet-a", "imagenet-a")

The CLI front ends are `vmem eval`, `vmem tune`, `vmem prune`, `vmem suspects` and `vmem experiment`.
"""

from .datasets import DatasetFormat, EvalDataset, EvalImage, align_labels, read_classes_file, read_dataset
from .experiments import EXPERIMENTS, ExperimentResult, LabelledArrays, write_experiment
from .harness import EvalReport, QuerySet, RunInfo, evaluate, memory_from_dataset, query_set, write_report
from .pruning import PruneMode, PruneReport, prune_store, undo_pruning, wrong_decision_counts
from .rerank_eval import RerankReport, evaluate_rerank
from .scoring import MemoryArrays, NeighborTable, Scores, exact_search, score

__all__ = [
    "EXPERIMENTS",
    "DatasetFormat",
    "EvalDataset",
    "EvalImage",
    "EvalReport",
    "ExperimentResult",
    "LabelledArrays",
    "MemoryArrays",
    "NeighborTable",
    "PruneMode",
    "PruneReport",
    "QuerySet",
    "RerankReport",
    "RunInfo",
    "Scores",
    "align_labels",
    "evaluate",
    "evaluate_rerank",
    "exact_search",
    "memory_from_dataset",
    "prune_store",
    "query_set",
    "read_classes_file",
    "read_dataset",
    "score",
    "undo_pruning",
    "write_experiment",
    "write_report",
    "wrong_decision_counts",
]
