"""The arithmetic of elastic item embeddings (RULE, PEEL), shared by the torch table and its trainers.

An item's vector of width ``D`` is ``N`` blocks ``e_1..e_N`` of width ``b = D / N``. Items fall into ``G``
item groups; an *architecture* is a boolean mask ``(G, N)`` giving each group a non-empty subset ``S_g`` of
the blocks, and a group's items keep only those blocks. A query (user vector) ``u`` of width ``D`` is
split into chunks ``u_1..u_N`` the same way. Two scorings:

* ``"shared"`` (RULE's code): ``s_S(u, v) = (N / |S|) * sum_{k in S} <u_bar, e_k>`` with ``u_bar = sum_j u_j``.
  Every block meets the whole query, so *any* subset gives a score on the same scale as the full one: each
  block is an estimate of the same ``b``-wide item vector and a subset averages fewer of them. The price:
  the full model ranks in ``b`` dimensions (``<u_bar, sum_k e_k>``), whatever ``D`` is.
* ``"aligned"`` (pocketrec's alternative): ``s_S(u, v) = sum_{k in S} <u_k, e_k>``: block ``k`` meets only
  chunk ``k`` of the query, so the full architecture is the plain ``D``-wide dot product (a CF teacher's own
  score) and a subset is a partial dot product, the best rank-``|S| b`` approximation when the blocks are
  principal directions (:func:`pocketrec.methods.rule.principal_rotation`). No ``N / |S|`` rescale: the
  blocks are not estimates of one vector, and inflating a group's scores by ``N / |S|`` put its items above
  the better-described ones (on ml-100k a popularity allocation fell from 19% to 2% Recall@20 with it).

Both are a dot product of the query with an *effective row* of width ``D`` (:func:`effective_rows`), which
is how the table scores and how a device could too.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

SCORINGS = ("shared", "aligned")
GROUPINGS = ("popularity", "contiguous")


def check_scoring(scoring: str) -> None:
    if scoring not in SCORINGS:
        raise ValueError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")


def check_architecture(mask: np.ndarray | Tensor, num_groups: int, num_blocks: int) -> np.ndarray:
    """``mask`` as a boolean numpy array ``(num_groups, num_blocks)``; ``ValueError`` for another shape or a
    group without any block."""
    mask = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if mask.shape != (num_groups, num_blocks):
        raise ValueError(f"an architecture is a ({num_groups}, {num_blocks}) mask of item groups x blocks, "
                         f"got shape {mask.shape}")
    mask = mask.astype(bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if len(empty):
        raise ValueError(f"every item group needs at least one block; group(s) {empty.tolist()} have none")
    return mask


def effective_rows(blocks: Tensor, groups: Tensor, mask: Tensor, scoring: str) -> Tensor:
    """Rows ``(R, N * b)`` whose dot product with a ``D``-wide query is the elastic score (module docstring).

    ``blocks (R, N, b)``: the rows' blocks; ``groups (R,)`` long: each row's item group; ``mask (G, N)``
    (bool or 0/1 float): the architecture. Differentiable in ``blocks``. ``shared`` rows are the scaled
    subset sum tiled ``N`` times (``<u, tile(x, N)> = <u_bar, x>``); ``aligned`` rows are the kept blocks
    with zeros in place of the dropped ones.
    """
    check_scoring(scoring)
    rows, num_blocks, width = blocks.shape
    keep = mask.to(blocks.dtype)[groups]  # (R, N)
    kept = blocks * keep.unsqueeze(-1)
    if scoring == "shared":
        scale = num_blocks / keep.sum(dim=1).clamp_min(1.0)  # (R,)
        return (kept.sum(dim=1) * scale.unsqueeze(-1)).repeat(1, num_blocks)
    return kept.reshape(rows, num_blocks * width)


def item_groups(counts: np.ndarray, num_groups: int, grouping: str = "popularity") -> np.ndarray:
    """The item group ``(n + 1,)`` int64 of every item id (``counts[i]``: item ``i``'s training interactions;
    index 0 is padding and gets group 0).

    ``"popularity"``: items sorted by count (most popular first, ties by id) and cut into ``num_groups`` runs
    of equal size (the first groups one item larger when ``n`` does not divide), so group 0 holds the most
    popular items. ``"contiguous"`` (as RULE's code): the same equal runs over ids ``1..n`` in id order.
    """
    if grouping not in GROUPINGS:
        raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}, got {grouping!r}")
    counts = np.asarray(counts)
    num_items = len(counts) - 1
    if not 1 <= num_groups <= num_items:
        raise ValueError(f"num_groups must lie in 1..{num_items} (the number of items), got {num_groups}")
    groups = np.zeros(num_items + 1, dtype=np.int64)
    if grouping == "contiguous":
        order = np.arange(1, num_items + 1)
    else:  # most popular first, ties by id
        order = np.lexsort((np.arange(1, num_items + 1), -counts[1:])) + 1
    sizes = np.full(num_groups, num_items // num_groups, dtype=np.int64)
    sizes[: num_items % num_groups] += 1  # the first groups one item larger
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    for g in range(num_groups):
        groups[order[bounds[g]:bounds[g + 1]]] = g
    return groups


def full_architecture(num_groups: int, num_blocks: int) -> np.ndarray:
    """Every block for every group: the model as trained."""
    return np.ones((num_groups, num_blocks), dtype=bool)


def random_architecture(num_groups: int, num_blocks: int, generator: torch.Generator | None = None,
                        prefix: bool = False) -> Tensor:
    """A random architecture ``(G, N)`` bool for training: each group keeps ``k ~ U{1..N}`` blocks, chosen
    uniformly (so small and large subsets are trained alike), or its first ``k`` with ``prefix``."""
    sizes = torch.randint(1, num_blocks + 1, (num_groups, 1), generator=generator)
    if prefix:
        return torch.arange(num_blocks).unsqueeze(0) < sizes
    ranks = torch.rand(num_groups, num_blocks, generator=generator).argsort(dim=1).argsort(dim=1)
    return ranks < sizes
