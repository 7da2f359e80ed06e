"""Metrics and full-ranking evaluation."""

from pocketrec.eval.evaluate import evaluate
from pocketrec.eval.metrics import DEFAULT_KS, format_metrics, metrics_from_ranks, target_ranks

__all__ = ["DEFAULT_KS", "evaluate", "format_metrics", "metrics_from_ranks", "target_ranks"]
