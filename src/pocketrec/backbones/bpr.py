"""BPR training pieces shared by the collaborative-filtering backbones (LightGCN, user vectors).

* :func:`binary_interactions`: a user x item interaction matrix checked and made binary;
* :class:`BPRBatches`: the training triples ``(user, positive, negative)``, one uniform negative per
  training interaction;
* :func:`bpr_term`: the BPR loss of a batch's score margins, ``mean softplus(s(u, j) - s(u, i))``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix


def binary_interactions(train: csr_matrix) -> csr_matrix:
    """``train`` as binary CSR (sorted indices, no duplicates, no explicit zeros); checks the padding."""
    if not hasattr(train, "tocsr"):
        raise TypeError(f"the interactions must be a scipy.sparse matrix (csr), got {type(train).__name__}")
    matrix = train.tocsr(copy=True).astype(np.float32)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    matrix.sort_indices()
    matrix.data[:] = 1.0
    if matrix.shape[0] < 2 or matrix.shape[1] < 2:
        raise ValueError(f"the interaction matrix has shape {matrix.shape}; it must be (num_users + 1, "
                         "num_items + 1) with at least one user and one item")
    if matrix.indptr[1] > 0 or (matrix.nnz and matrix.indices.min() == 0):
        raise ValueError("the interaction matrix has entries in row 0 or column 0, which are padding (user and "
                         "item ids start at 1)")
    return matrix


def bpr_term(users: Tensor, positives: Tensor, negatives: Tensor) -> Tensor:
    """``mean softplus(<u, j> - <u, i>)`` (``-log sigmoid`` of the score margin, written stably) over rows of
    user vectors ``users``, positive item vectors ``positives`` and negative ones ``negatives`` (``(B, D)``)."""
    margin = (users * positives).sum(-1) - (users * negatives).sum(-1)
    return nn.functional.softplus(-margin).mean()


class BPRBatches:
    """BPR training triples ``(user, positive item, negative item)`` of an interaction matrix.

    One epoch holds every training interaction once, in the order ``seed`` shuffles them, each with one
    negative drawn uniformly from ``1..num_items`` among the items the user has *not* interacted with
    (drawn vectorised; the few draws that hit a positive are redrawn in rounds, and after ``max_rounds``
    rounds the remaining ones are drawn from the user's complement directly). Satisfies the trainer's
    ``BatchSource`` protocol (``num_batches()``, ``batches(seed)``).
    """

    def __init__(self, train: csr_matrix, batch_size: int = 2048, max_rounds: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        matrix = binary_interactions(train)
        if matrix.nnz == 0:
            raise ValueError("the interaction matrix is empty: nothing to train on")
        self.batch_size = int(batch_size)
        self.max_rounds = int(max_rounds)
        self.num_items = matrix.shape[1] - 1
        degree = np.diff(matrix.indptr)
        full = np.flatnonzero(degree >= self.num_items)
        if len(full):
            raise ValueError(f"{len(full)} user(s) (e.g. user {full[0]}) interacted with every item: no negative "
                             "item exists for them")
        self.users = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), degree)
        self.items = matrix.indices.astype(np.int64)
        self._indptr = matrix.indptr
        # Row-major keys of the positives, sorted because rows ascend and each row's indices are sorted.
        self._keys = self.users * (self.num_items + 1) + self.items

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    def num_batches(self) -> int:
        return -(-self.num_interactions // self.batch_size)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Whether each ``(users[k], items[k])`` is a training interaction (vectorised)."""
        keys = users * (self.num_items + 1) + items
        at = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        return self._keys[at] == keys

    def sample_negatives(self, users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniform non-positive item per user of ``users``."""
        negatives = rng.integers(1, self.num_items + 1, size=len(users), dtype=np.int64)
        redo = np.flatnonzero(self.is_positive(users, negatives))
        for _ in range(self.max_rounds):
            if len(redo) == 0:
                return negatives
            negatives[redo] = rng.integers(1, self.num_items + 1, size=len(redo), dtype=np.int64)
            redo = redo[self.is_positive(users[redo], negatives[redo])]
        for k in redo:  # users with almost every item: draw from what is left
            seen = self.items[self._indptr[users[k]]:self._indptr[users[k] + 1]]
            negatives[k] = rng.choice(np.setdiff1d(np.arange(1, self.num_items + 1), seen))
        return negatives

    def batches(self, seed: int) -> Iterator[Tensor]:
        """``(B, 3)`` LongTensors ``(user, positive, negative)``; the same seed gives the same epoch."""
        rng = np.random.default_rng(seed)
        order = rng.permutation(self.num_interactions)
        for start in range(0, len(order), self.batch_size):
            chosen = order[start:start + self.batch_size]
            users = self.users[chosen]
            triples = np.stack([users, self.items[chosen], self.sample_negatives(users, rng)], axis=1)
            yield torch.from_numpy(triples)
