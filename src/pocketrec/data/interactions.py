"""Interaction data for collaborative filtering (LightGCN, RULE, PEEL): which user interacted with which item.

An :class:`InteractionDataset` holds two vocabularies (raw user / item ids -> 1..n, id 0 is padding for
both) and three binary user x item matrices, ``train``, ``valid`` and ``test``, of shape
``(num_users + 1, num_items + 1)`` with row 0 and column 0 empty. Order and repetition are gone: a
(user, item) pair is an interaction once, whatever the file said, and the three splits never share a pair.

Two ways to split (both seeded, both per user, both vectorised):

* :func:`split_train_test`: the LightGCN / NGCF layout, a given ``train.txt`` and ``test.txt``. Test is
  kept as given; validation is a random ``valid_fraction`` of each user's training items carved out of
  train (``max(1, round(n * valid_fraction))`` items of a user with ``n >= 2``; a user with one training
  item keeps it). The vocabularies are the users and items of ``train.txt``, so an item whose training
  interactions all went to validation keeps its id (with zero training count) and its test interactions.
  Test pairs whose user or item is not in ``train.txt`` are dropped, with a warning and a count in
  ``summary()`` (LightGCN's own files never have any); a test pair that is also in ``train.txt`` stays
  in train only (also warned).
* :func:`split_interactions`: any other source (MovieLens ``u.data``, RecBole ``.inter``, CSV/TSV, the
  S3-Rec Amazon sequences taken as interactions). Each user's distinct items are shuffled and cut by
  ``ratios`` (train, valid, test): ``max(1, round(n * ratio))`` items each for test and validation,
  the rest (at least one) for training. A user with too few distinct items to give every non-empty
  split one (fewer than 3 with the default ratios) goes entirely to train. The vocabularies are the
  users and items of the training part; validation and test pairs of an item that is not there (it
  was only ever seen in validation or test) are dropped and counted in ``summary()``.

Vocabulary order is deterministic and independent of row order: ascending by integer value when every
raw id is a non-negative decimal integer (LightGCN's ids ``0..n-1`` map to ``1..n``; MovieLens and S3-Rec
ids map to themselves when none is missing), otherwise ascending as strings. ``round`` is half-up. The
split depends on the seed and on the order of the rows (the order of the input pairs after duplicates
collapse to their first occurrence).

scipy is imported when a dataset is built, not when :mod:`pocketrec.data` is imported.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from pocketrec.data.dataset import Vocabulary
from pocketrec.data.errors import DataError
from pocketrec.data.preprocess import _codes, filter_min_rating
from pocketrec.data.preprocess import k_core as k_core_filter
from pocketrec.data.readers import Interactions

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

CF = "cf"
SPLITS = ("train", "valid", "test")
_TRAIN, _VALID, _TEST = 0, 1, 2

UserItems = Sequence[tuple[str, Sequence[str]]]


def _sparse() -> Any:
    try:
        import scipy.sparse as sp
    except ImportError:  # pragma: no cover - scipy is a dependency; this is for broken environments
        raise ImportError("collaborative-filtering data needs scipy (pip install scipy)") from None
    return sp


@dataclass
class InteractionDataset:
    """Users, items and three disjoint binary interaction matrices (see the module docstring).

    ``train``/``valid``/``test`` are ``scipy.sparse.csr_matrix`` (float32, 1.0 per interaction) of shape
    ``(num_users + 1, num_items + 1)``; row and column 0 (padding) are empty. ``source`` names the
    files read; ``origin`` is what :func:`~pocketrec.data.load_interactions` was given (a registered
    name or an absolute path), so a checkpoint can load the same data again. ``dropped`` counts the
    validation and test pairs left out because their user or item has no training data.
    """

    name: str
    users: Vocabulary
    items: Vocabulary
    train: csr_matrix
    valid: csr_matrix
    test: csr_matrix
    source: str = ""
    origin: str = ""
    protocol: str = CF
    dropped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.users) + 1, len(self.items) + 1)
        for split in SPLITS:
            m = getattr(self, split)
            if m.shape != shape:
                raise ValueError(f"{split} matrix has shape {m.shape}, expected {shape} (users + 1, items + 1)")
            if m.indptr[1] != 0 or (m.indices == 0).any():
                raise ValueError(f"{split} matrix has interactions in the padding row or column 0")

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def vocab(self) -> Vocabulary:
        """The item vocabulary (the name every dataset type gives it: checkpoints record its fingerprint)."""
        return self.items

    @property
    def num_items(self) -> int:
        return len(self.items)

    def matrix(self, split: str) -> csr_matrix:
        """The ``"train"``, ``"valid"`` or ``"test"`` matrix."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        return getattr(self, split)

    def pairs(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """``(users, items)`` internal ids (int64) of every interaction of ``split``, row by row."""
        m = self.matrix(split)
        users = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
        return users, m.indices.astype(np.int64)

    def item_counts(self) -> np.ndarray:
        """Training interactions per item id (index = id; index 0 is padding and 0), int64."""
        return np.bincount(self.train.indices, minlength=self.num_items + 1).astype(np.int64)

    def seen(self, split: str) -> csr_matrix:
        """Items to exclude when ranking for ``split``: train for ``"valid"``, train + valid for ``"test"``."""
        if split == "valid":
            return self.train
        if split == "test":
            return (self.train + self.valid).tocsr()
        raise ValueError(f"seen() is for 'valid' or 'test', got {split!r}")

    def fingerprint(self) -> str:
        """Short hash of both vocabularies (used to refuse checkpoints trained on other data)."""
        both = f"items:{self.items.fingerprint()}\nusers:{self.users.fingerprint()}"
        return hashlib.sha256(both.encode()).hexdigest()[:16]

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "users": self.num_users,
            "items": self.num_items,
            "train_interactions": int(self.train.nnz),
            "valid_interactions": int(self.valid.nnz),
            "test_interactions": int(self.test.nnz),
            "dropped_valid": int(self.dropped.get("valid", 0)),
            "dropped_test": int(self.dropped.get("test", 0)),
            "source": self.source,
        }

    def __repr__(self) -> str:
        return f"InteractionDataset({json.dumps(self.summary())})"


# ------------------------------------------------------------------------------------------ helpers


def _round_half_up(x: np.ndarray) -> np.ndarray:
    return np.floor(x + 0.5).astype(np.int64)


def _first_occurrences(user_codes: np.ndarray, item_codes: np.ndarray) -> np.ndarray:
    """Boolean mask of the first occurrence of each (user, item) pair."""
    keep = np.zeros(len(user_codes), dtype=bool)
    if len(user_codes):
        key = user_codes * (int(item_codes.max()) + 1) + item_codes
        keep[np.unique(key, return_index=True)[1]] = True
    return keep


def _shuffled_ranks(user_codes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each pair's position in a random order of its user's pairs, and the pair count of each user."""
    n = len(user_codes)
    counts = np.bincount(user_codes, minlength=int(user_codes.max(initial=-1)) + 1)
    order = np.lexsort((rng.random(n), user_codes))
    starts = np.cumsum(counts) - counts
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n, dtype=np.int64) - starts[user_codes[order]]
    return ranks, counts


def _vocab_order(values: list[str]) -> list[int]:
    """Indices of ``values`` in vocabulary order (module docstring): integers by value, else strings."""
    if all(v.isascii() and v.isdigit() for v in values):
        return sorted(range(len(values)), key=lambda k: (int(values[k]), values[k]))
    return sorted(range(len(values)), key=values.__getitem__)


def _vocabulary(codes: np.ndarray, values: list[str], members: np.ndarray) -> tuple[Vocabulary, np.ndarray]:
    """The vocabulary of the codes selected by ``members`` and the internal id of every code (0: absent)."""
    present = np.zeros(len(values), dtype=bool)
    present[codes[members]] = True
    kept = np.flatnonzero(present)
    order = kept[_vocab_order([values[k] for k in kept])]
    ids = np.zeros(len(values), dtype=np.int64)
    ids[order] = np.arange(1, len(order) + 1, dtype=np.int64)
    return Vocabulary([values[k] for k in order]), ids


Codes = tuple[np.ndarray, list[str]]  # (code of each pair, raw id of each code), from preprocess._codes


def _assemble(name: str, users: Codes, items: Codes, part: np.ndarray, vocab_members: np.ndarray,
              source: str) -> InteractionDataset:
    """Vocabularies from the pairs in ``vocab_members`` and the three matrices; ``part`` is 0/1/2 per pair."""
    sp = _sparse()
    (user_codes, user_values), (item_codes, item_values) = users, items
    user_vocab, user_ids = _vocabulary(user_codes, user_values, vocab_members)
    item_vocab, item_ids = _vocabulary(item_codes, item_values, vocab_members)
    rows, cols = user_ids[user_codes], item_ids[item_codes]
    known = (rows > 0) & (cols > 0)
    shape = (len(user_vocab) + 1, len(item_vocab) + 1)
    mats = []
    for p in (_TRAIN, _VALID, _TEST):
        sel = known & (part == p)
        m = sp.csr_matrix((np.ones(int(sel.sum()), dtype=np.float32), (rows[sel], cols[sel])), shape=shape)
        m.sort_indices()
        mats.append(m)
    dropped = {"valid": int((~known & (part == _VALID)).sum()), "test": int((~known & (part == _TEST)).sum())}
    return InteractionDataset(name, user_vocab, item_vocab, *mats, source=source, dropped=dropped)


def _portion(counts: np.ndarray, ratio: float, eligible: np.ndarray) -> np.ndarray:
    """``max(1, round(n * ratio))`` for eligible users, 0 for the others or when ``ratio`` is 0."""
    if ratio <= 0:
        return np.zeros_like(counts)
    return np.where(eligible, np.maximum(_round_half_up(counts * ratio), 1), 0)


def _check_nonempty(ds: InteractionDataset, wanted: dict[str, bool], source: str, why: str) -> None:
    for split in SPLITS:
        if wanted[split] and ds.matrix(split).nnz == 0:
            raise DataError(source, None, f"the {split} split is empty ({why})")


def _dedupe(interactions: Interactions) -> Interactions:
    users, _ = _codes(interactions.users)
    items, _ = _codes(interactions.items)
    keep = _first_occurrences(users, items)
    return interactions if keep.all() else interactions.subset(keep)


# ------------------------------------------------------------------------------------------- splits


def split_interactions(name: str, interactions: Interactions, *, ratios: Sequence[float] = (0.8, 0.1, 0.1),
                       seed: int = 0, min_rating: float | None = None, k_core: int | None = None,
                       source: str | None = None) -> InteractionDataset:
    """Seeded per-user random split of an interactions table (module docstring, second bullet).

    ``min_rating`` keeps rows rated at least that much (a :class:`DataError` when there are no ratings);
    then duplicate (user, item) rows collapse to their first occurrence; then ``k_core`` keeps the
    iterative k-core (every user and item with at least ``k_core`` distinct partners); then the split.
    ``ratios`` are (train, valid, test), non-negative, summing to 1, train > 0.
    """
    r = [float(x) for x in ratios]
    if len(r) != 3 or min(r) < 0 or r[0] <= 0 or abs(sum(r) - 1.0) > 1e-6:
        raise ValueError(f"ratios must be 3 non-negative numbers (train > 0) summing to 1, got {tuple(ratios)}")
    source = interactions.source if source is None else source
    if min_rating is not None:
        interactions = filter_min_rating(interactions, min_rating)
    interactions = _dedupe(interactions)
    if k_core is not None:
        interactions = k_core_filter(interactions, k_core, k_core)
    if len(interactions) == 0:
        raise DataError(source, None, "no interactions left" + (f" with rating >= {min_rating}"
                                                                 if min_rating is not None else ""))
    users, items = _codes(interactions.users), _codes(interactions.items)
    user_codes = users[0]
    ranks, counts = _shuffled_ranks(user_codes, np.random.default_rng(seed))
    _, r_valid, r_test = r
    needed = 1 + (r_valid > 0) + (r_test > 0)
    eligible = counts >= needed
    n_test = np.minimum(_portion(counts, r_test, eligible), np.maximum(counts - needed + 1, 0))
    n_valid = np.minimum(_portion(counts, r_valid, eligible), counts - n_test - 1)
    cut_test, cut_valid = n_test[user_codes], (n_test + n_valid)[user_codes]
    part = np.where(ranks < cut_test, _TEST, np.where(ranks < cut_valid, _VALID, _TRAIN))
    ds = _assemble(name, users, items, part, part == _TRAIN, source)
    _check_nonempty(ds, {"train": True, "valid": r_valid > 0, "test": r_test > 0}, source,
                    f"{len(counts)} users; a user needs {needed} distinct items to reach every split")
    return ds


def split_train_test(name: str, train: UserItems, test: UserItems, *, valid_fraction: float = 0.1,
                     seed: int = 0, min_rating: float | None = None, k_core: int | None = None,
                     train_source: str = "train.txt", test_source: str = "test.txt") -> InteractionDataset:
    """LightGCN layout: given train and test ``(user, items)`` lines (module docstring, first bullet).

    ``k_core`` applies to the training pairs only (test pairs of users or items it removes are then
    dropped like any unknown pair); ``min_rating`` is a :class:`DataError` (the format has no ratings).
    """
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
    train_users = [u for u, its in train for _ in its]
    train_items = [i for _, its in train for i in its]
    if min_rating is not None:
        raise DataError(train_source, None, "min_rating given, but the data has no ratings")
    if k_core is not None:
        inter = Interactions(train_users, train_items, np.arange(len(train_items), dtype=np.float64), None,
                             train_source)
        inter = k_core_filter(_dedupe(inter), k_core, k_core)
        train_users, train_items = inter.users, inter.items
    test_users = [u for u, its in test for _ in its]
    test_items = [i for _, its in test for i in its]
    n_train = len(train_users)
    if n_train == 0:
        raise DataError(train_source, None, "no training interactions")
    user_codes, user_values = _codes(train_users + test_users)
    item_codes, item_values = _codes(train_items + test_items)
    first = _first_occurrences(user_codes, item_codes)
    in_train = np.zeros(len(user_codes), dtype=bool)
    in_train[:n_train] = True
    overlap = int((~first[n_train:]).sum()) - _within_duplicates(user_codes[n_train:], item_codes[n_train:])
    user_codes, item_codes, in_train = user_codes[first], item_codes[first], in_train[first]
    part = np.full(len(user_codes), _TEST, dtype=np.int64)
    train_codes = user_codes[in_train]
    ranks, counts = _shuffled_ranks(train_codes, np.random.default_rng(seed))
    n_valid = np.zeros_like(counts)
    if valid_fraction > 0:
        n_valid = np.where(counts >= 2, np.minimum(np.maximum(_round_half_up(counts * valid_fraction), 1),
                                                   counts - 1), 0)
    part[in_train] = np.where(ranks < n_valid[train_codes], _VALID, _TRAIN)
    ds = _assemble(name, (user_codes, user_values), (item_codes, item_values), part, in_train,
                   f"{train_source} + {test_source}")
    if ds.dropped["test"]:
        warnings.warn(f"{test_source}: {ds.dropped['test']} test interaction(s) dropped: their item or user "
                      f"has no interaction in {train_source}", UserWarning, stacklevel=2)
    if overlap:
        warnings.warn(f"{test_source}: {overlap} test interaction(s) also in {train_source}; kept in "
                      "training only", UserWarning, stacklevel=2)
    _check_nonempty(ds, {"train": False, "valid": valid_fraction > 0, "test": False}, train_source,
                    "no user has 2 or more training items")
    _check_nonempty(ds, {"train": False, "valid": False, "test": True}, test_source,
                    f"no test interaction with a user and item of {train_source}")
    return ds


def _within_duplicates(user_codes: np.ndarray, item_codes: np.ndarray) -> int:
    """Number of repeated pairs among these pairs (the same item twice on one test line)."""
    return int((~_first_occurrences(user_codes, item_codes)).sum())
