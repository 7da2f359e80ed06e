"""Full-ranking top-K metrics for collaborative filtering (several held-out items per user).

The protocol of NGCF/LightGCN: for every user with at least one held-out (``truth``) item, score the whole
catalogue, remove the padding column 0 and the user's ``exclude`` items (their training items), and take
the top ``K``. With ``hits@K`` the number of truth items among them:

* ``recall@K = hits@K / |truth|`` (LightGCN's definition: divided by the number of the user's test items,
  not by ``min(|truth|, K)``);
* ``precision@K = hits@K / K``;
* ``ndcg@K = DCG@K / IDCG@K`` with ``DCG = sum over hits of 1 / log2(rank + 2)`` (0-based rank) and the
  ideal DCG over ``min(|truth|, K)`` positions (the standard definition, not NGCF's variant whose ideal is
  taken from the retrieved hit list).

Each metric is averaged over the evaluated users. As in :mod:`pocketrec.eval.metrics`, ties are broken
*against* the truth items: an item's rank is the number of other items scoring at least as high, so a
constant model scores zero rather than whatever ``topk``'s tie order would give it. A score that is not
finite (NaN, +-inf: a diverged model) is treated as ``-inf`` and is never a hit; such rows are reported
with a ``RuntimeWarning``. A truth item that is also excluded can never be hit but still counts in
``|truth|`` (the splits are expected to be disjoint).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from pocketrec.eval.metrics import CF_KS, count_nonfinite_rows
from pocketrec.train import distributed

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

#: Upper bound on the number of scores held at once (users x catalogue); 2**25 floats = 128 MiB.
CF_MAX_SCORES = 2**25

ScoreUsers = Callable[[Tensor], Tensor]


@torch.no_grad()
def keep_rows(matrix: csr_matrix, rows: np.ndarray) -> csr_matrix:
    """``matrix`` (CSR) with only the rows ``rows`` kept (the others emptied, the shape unchanged): the held-out
    interactions of a subset of users, for :func:`evaluate_cf`."""
    from scipy import sparse

    keep = np.zeros(matrix.shape[0])
    keep[np.asarray(rows, dtype=np.int64)] = 1.0
    out = (sparse.diags(keep) @ matrix).tocsr()
    out.eliminate_zeros()
    return out


def sample_users(truth: csr_matrix, max_users: int, seed: int = 0, users: np.ndarray | None = None) -> np.ndarray:
    """The users (rows) of ``truth`` with held-out interactions, among ``users`` when given, at most
    ``max_users`` of them drawn with ``seed`` (sorted)."""
    have = np.flatnonzero(np.diff(truth.tocsr().indptr) > 0)
    if users is not None:
        have = np.intersect1d(have, np.asarray(users, dtype=np.int64))
    if len(have) > max_users:
        have = np.sort(np.random.default_rng(seed).choice(have, max_users, replace=False))
    return have


def evaluate_cf(score_users: ScoreUsers, truth: csr_matrix, exclude: csr_matrix | None = None,
                ks: Iterable[int] = CF_KS, user_batch: int = 1024, max_scores: int = CF_MAX_SCORES,
                progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Recall/NDCG/Precision@K of ``score_users`` on the held-out interactions ``truth``.

    ``score_users(user_ids)`` takes a ``LongTensor (B,)`` of internal user ids and returns scores
    ``(B, num_items + 1)`` over the whole catalogue (column ``j`` is item ``j``; column 0 is padding and
    is ignored whatever it holds). ``truth`` and ``exclude`` are binary ``(num_users + 1, num_items + 1)``
    CSR matrices (row and column 0 padding); a user without truth items is skipped. Users are scored in
    chunks of at most ``user_batch`` and at most ``max_scores // (num_items + 1)`` users, so that a 1M-item
    catalogue fits in memory. Returns the means over evaluated users and ``"users"`` (their count).
    Under ``torch.distributed`` every rank must call it: the chunks are shared out round-robin and the
    result, on every rank, equals a single process's exactly.
    """
    ks = tuple(sorted({int(k) for k in ks}))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks must be one or more cut-offs >= 1, got {ks}")
    if user_batch < 1 or max_scores < 1:
        raise ValueError(f"user_batch and max_scores must be >= 1, got {user_batch} and {max_scores}")
    truth = _binary_csr(truth, "truth")
    num_rows, num_cols = truth.shape
    if num_cols < 2:
        raise ValueError(f"truth has {num_cols} column(s): it needs the padding column 0 and at least one item")
    if exclude is not None:
        exclude = _binary_csr(exclude, "exclude")
        if exclude.shape != truth.shape:
            raise ValueError(f"exclude has shape {exclude.shape}, truth has {truth.shape}: both must be "
                             "(num_users + 1, num_items + 1)")
    users = np.flatnonzero(np.diff(truth.indptr) > 0)
    if len(users) == 0:
        raise ValueError("truth holds no interactions: no user to evaluate")
    k_max = max(ks)
    k_top = min(k_max, num_cols)  # a catalogue smaller than K: every item is in the list
    chunk = max(1, min(user_batch, max_scores // num_cols))
    # Discount of every 0-based rank, and ideal DCG for 1..k_max truth items (cumulated discounts).
    discounts = 1.0 / np.log2(np.arange(k_max, dtype=np.float64) + 2.0)
    ideal = np.concatenate([[0.0], np.cumsum(discounts)])
    names = [f"{name}@{k}" for name in ("recall", "ndcg", "precision") for k in ks]
    # Under torch.distributed each rank scores every W-th chunk of users; the per-chunk sums come back in
    # chunk order and are added as a single process adds them, so the metrics are equal bit for bit.
    records: list[tuple[int, tuple[dict[str, float], int]]] = []
    starts = range(0, len(users), chunk)
    for index, start in enumerate(tqdm(starts, desc=desc, disable=not progress, leave=False)):
        if not distributed.is_mine(index):
            continue
        sums = {name: 0.0 for name in names}
        nonfinite = 0
        ids = users[start:start + chunk]
        scores = score_users(torch.from_numpy(ids).long())
        if scores.shape != (len(ids), num_cols):
            raise ValueError(f"score_users returned shape {tuple(scores.shape)} for {len(ids)} users; expected "
                             f"{(len(ids), num_cols)} (num_users + 1 rows of truth, num_items + 1 columns)")
        scores = scores.to(torch.float32, copy=True)  # the caller's tensor is never modified
        scores[:, 0] = 0.0
        # Any NaN or inf makes a row's sum non-finite: one cheap pass finds the rows to look at closely.
        suspect = (~torch.isfinite(scores.sum(1))).nonzero().squeeze(1)
        if len(suspect):
            rows = scores[suspect]
            nonfinite += count_nonfinite_rows(rows)
            scores[suspect] = torch.nan_to_num(rows, nan=-torch.inf, posinf=-torch.inf, neginf=-torch.inf)
        scores[:, 0] = -torch.inf
        if exclude is not None:
            rows, cols = _coordinates(exclude[ids], scores.device)
            scores[rows, cols] = -torch.inf
        # One more than K: whether ties at the K-th value reach outside the list.
        top_values, top_items = torch.topk(scores, min(k_top + 1, num_cols), dim=1)
        after = top_values[:, k_top] if top_values.shape[1] > k_top else None
        top_values, top_items = top_values[:, :k_top], top_items[:, :k_top]
        # Pessimistic 0-based rank of each listed item: how many other items score at least as high.
        descending = -top_values  # ascending, as searchsorted wants
        ranks = torch.searchsorted(descending, descending, right=True) - 1
        kth = top_values[:, -1:]
        if after is not None:
            spill = ((after == kth[:, 0]) & torch.isfinite(after)).nonzero().squeeze(1)
            if len(spill):  # rare: count the K-th value's ties over the whole row
                at_kth = (scores[spill] >= kth[spill]).sum(1, keepdim=True) - 1
                ranks[spill] = torch.where(top_values[spill] == kth[spill], at_kth, ranks[spill])
        held = truth[ids]
        rows, cols = _coordinates(held, scores.device)
        truth_keys = rows * num_cols + cols  # sorted: rows ascend, columns ascend within a row
        listed = torch.arange(len(ids), device=scores.device).unsqueeze(1) * num_cols + top_items
        found = truth_keys[torch.searchsorted(truth_keys, listed).clamp_max(len(truth_keys) - 1)] == listed
        hit = found & torch.isfinite(top_values)
        hit_ranks = torch.where(hit, ranks, k_max).cpu().numpy()  # k_max: a miss at every K
        num_truth = np.diff(held.indptr).astype(np.float64)
        for k in ks:
            hits_k = hit_ranks < k
            count = hits_k.sum(1).astype(np.float64)
            dcg = np.where(hits_k, discounts[np.minimum(hit_ranks, k_max - 1)], 0.0).sum(1)
            sums[f"recall@{k}"] += float((count / num_truth).sum())
            sums[f"precision@{k}"] += float(count.sum() / k)
            sums[f"ndcg@{k}"] += float((dcg / ideal[np.minimum(num_truth, k).astype(np.int64)]).sum())
        records.append((index, (sums, nonfinite)))
        distributed.heartbeat()
    sums = {name: 0.0 for name in names}
    nonfinite = 0
    for chunk_sums, bad in distributed.gather_ordered(records):
        for name, value in chunk_sums.items():
            sums[name] += value
        nonfinite += bad
    if nonfinite:
        warnings.warn(f"{nonfinite:,} of {len(users):,} users had NaN or infinite scores (such an item is never a "
                      "hit): the model's weights are not finite", RuntimeWarning, stacklevel=2)
    count = len(users)
    return {name: value / count for name, value in sums.items()} | {"users": float(count)}


def _binary_csr(matrix: csr_matrix, name: str) -> csr_matrix:
    """``matrix`` as CSR with sorted indices, no duplicates and no explicit zeros (the data is ignored)."""
    if not hasattr(matrix, "tocsr"):
        raise TypeError(f"{name} must be a scipy.sparse matrix (csr), got {type(matrix).__name__}")
    matrix = matrix.tocsr(copy=True)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    return matrix


def _coordinates(block: csr_matrix, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row (within the block) and column index of every stored entry of a CSR block."""
    rows = np.repeat(np.arange(block.shape[0]), np.diff(block.indptr))
    return (torch.from_numpy(rows).to(device), torch.from_numpy(block.indices.astype(np.int64)).to(device))


def evaluate_model(model: Any, dataset: Any, split: str, batch_size: int = 1024, progress: bool = False,
                   desc: str = "eval") -> dict[str, float]:
    """:func:`evaluate_cf` of a collaborative-filtering model (``attach``, ``score_users``) on ``split`` of
    ``dataset``, in eval mode (the model's mode is restored), ``batch_size`` users at a time."""
    model.attach(dataset)
    was_training = model.training
    model.eval()
    try:
        return evaluate_cf(model.score_users, dataset.matrix(split), dataset.seen(split), user_batch=batch_size,
                           progress=progress, desc=desc)
    finally:
        model.train(was_training)
