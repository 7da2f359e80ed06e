"""Full-ranking metrics for single-target next-item prediction.

The rank of the target is counted exactly from the scores, with ties broken *against* the target
(an item with the same score as the target ranks above it), so a constant model scores zero rather
than everything. A target whose score is not finite (NaN or +-inf: a diverged model) is a miss, ranked
last; an item whose score is NaN never ranks above a finite target. Recall@K equals HR@K and P@K in the
SR-GNN papers' sense (one target per example).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import Tensor

DEFAULT_KS = (5, 10, 20)
#: The cut-offs of collaborative-filtering evaluation (:mod:`pocketrec.eval.cf_metrics`).
CF_KS = (10, 20, 50)
#: Every validation metric an evaluation reports, by which a training run may pick its epoch.
SELECTION_METRICS = tuple(dict.fromkeys(
    [f"{name}@{k}" for name in ("recall", "mrr", "ndcg") for k in DEFAULT_KS]
    + [f"{name}@{k}" for name in ("recall", "ndcg", "precision") for k in CF_KS]))


def target_ranks(scores: Tensor, targets: Tensor) -> Tensor:
    """0-based rank of each target among all columns of ``scores (B, n)``; ties count against it.

    A non-finite target score ranks ``n`` (a miss at every K): ``(scores >= NaN).sum() - 1`` would be -1,
    which every metric counts as a hit.
    """
    target_scores = scores.gather(1, targets.view(-1, 1))
    ranks = (scores >= target_scores).sum(1) - 1
    return torch.where(torch.isfinite(target_scores.view(-1)), ranks, scores.shape[1])


def count_nonfinite_rows(scores: Tensor) -> int:
    """How many rows of ``scores`` hold a NaN or an infinity (what evaluation warns about)."""
    return int((~torch.isfinite(scores)).any(1).sum())


def metric_sums(ranks: Tensor, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Sums (not means) of Recall/MRR/NDCG@K over a batch of 0-based ranks, for accumulation."""
    ranks = ranks.to(torch.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.sum())
        out[f"mrr@{k}"] = float((hit / (ranks + 1)).sum())
        out[f"ndcg@{k}"] = float((hit / torch.log2(ranks + 2)).sum())
    return out


def metrics_from_ranks(ranks: Tensor | np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean Recall/MRR/NDCG@K (fractions in [0, 1]) of 0-based ranks."""
    ranks = torch.as_tensor(ranks)
    if ranks.numel() == 0:
        raise ValueError("no examples to evaluate")
    return {name: value / ranks.numel() for name, value in metric_sums(ranks, ks).items()}


def format_metrics(metrics: dict[str, float], keys: Iterable[str] = ("recall@20", "mrr@20", "ndcg@20")) -> str:
    """``recall@20 27.31  mrr@20 13.05 ...`` in percent."""
    return "  ".join(f"{k} {100 * metrics[k]:.2f}" for k in keys if k in metrics)
