"""A clustered item order for tensor-train tables: which TT index ("slot") each item gets.

A per-item TT builds the row of TT index ``s`` from the core slices of ``s``'s mixed-radix digits, so all
items sharing a first digit share a first-core slice, and all items sharing the later digits share those
slices. With the dataset's item order those groups are arbitrary. :func:`clustered_slots` gives the digits
a meaning before the cores are fitted:

* first digit = a cluster: balanced k-means of the item vectors into ``I_1`` clusters of at most
  ``Π_{k≥2} I_k`` items each (the slots one first digit owns);
* later digits = a slot within the cluster, matched to a second k-means of the items' residuals from
  their cluster centre (one centroid per slot position, shared by all clusters), one item per slot.

With 2 cores and enough rank (``R ≥ J_1 + J_2`` for a plain TT; the STP's ``G_2 ⊗ I_t`` needs about
``t² J_1 + J_2``) the TT contains "centre of the item's cluster + centre of its residual slot", the same
structure as two-stage residual quantisation; at smaller ranks the order still gives the shared slices
alike items. With 3 or more cores only the first digit is a cluster: the later digits split the slot index.

``benchmarks/tt_order.py`` measures it: the
least-squares warm start of a 2-core STT at 30x fitted to the d = 128 Diginetica teacher's rows has relative
error 0.945 with the dataset's order, 0.968 with a random one and 0.696 with this one (at rank 44 instead
of 50: the order's 2 bytes per item come out of the budget, so the order's own effect is if anything larger).

Memory: ``n x I_1`` costs for the clusters, then ``Π_{k≥2} I_k`` squared per cluster for the slots (one
cluster at a time): fine for catalogues of ~10^5 items (Diginetica: ~10 s), not meant for millions.

The padding id keeps slot 0 (so the table's padding handling is unchanged); items take slots ``1..``.
The order has to ship with the table (:class:`~pocketrec.tables.tt.TTTable` counts it in ``nbytes``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from pocketrec.quantize.kmeans import kmeans

__all__ = ["balanced_assign", "clustered_slots"]


def balanced_assign(cost: Tensor, capacity: Tensor, bins: Tensor | None = None) -> Tensor:
    """Assign each row to one of its candidate bins, no bin over ``capacity``, preferring low cost.

    ``cost`` is ``(n, C)``: row ``i``'s cost for its ``C`` candidates; the candidates are bins ``0..C-1``,
    or ``bins[i, c]`` when ``bins`` (``(n, C)`` long) is given. ``capacity`` is ``(num_bins,)``. Rounds of
    propose/accept: every unplaced row proposes to its cheapest candidate with room left, and each bin
    keeps its cheapest proposers up to its room. Every round fills a bin or places every proposer, so it
    ends. Returns the bin of every row; ``ValueError`` when some row's candidates run out of room.
    """
    n = cost.shape[0]
    room = capacity.to(torch.long).clone()
    if int(room.sum()) < n:
        raise ValueError(f"{n} rows do not fit in bins of total capacity {int(room.sum())}")
    assign = torch.full((n,), -1, dtype=torch.long)
    open_rows = torch.arange(n)
    while open_rows.numel():
        if bins is None:  # candidates = all bins: the room mask broadcasts over rows
            row_cost = cost[open_rows].masked_fill((room <= 0).unsqueeze(0), float("inf"))
        else:
            row_cost = cost[open_rows].masked_fill(room[bins[open_rows]] <= 0, float("inf"))
        best_cost, best = row_cost.min(dim=1)
        if torch.isinf(best_cost).any():
            raise ValueError("balanced_assign: a row has no candidate bin with room left")
        choice = best if bins is None else bins[open_rows].gather(1, best.unsqueeze(1)).squeeze(1)
        # rank the proposers of each bin by cost: sort by cost, then stably by bin
        by_cost = torch.argsort(best_cost, stable=True)
        order = by_cost[torch.argsort(choice[by_cost], stable=True)]
        sorted_bins = choice[order]
        first = torch.searchsorted(sorted_bins, sorted_bins, right=False)
        rank = torch.arange(order.numel()) - first
        accepted = order[rank < room[sorted_bins]]
        assign[open_rows[accepted]] = choice[accepted]
        room -= torch.bincount(choice[accepted], minlength=room.numel())
        keep = torch.ones(open_rows.numel(), dtype=torch.bool)
        keep[accepted] = False
        open_rows = open_rows[keep]
    return assign


def clustered_slots(rows: Tensor, item_factors: Sequence[int], seed: int = 0, iters: int = 15) -> Tensor:
    """Slots ``(num_items + 1,)`` for a TT with ``item_factors`` from the item rows ``(num_items, dim)``.

    Entry 0 (the padding id) is 0; items ``1..n`` get distinct slots in ``1..Π I_k - 1`` (module docstring).
    """
    rows = rows.detach().float()
    n = rows.shape[0]
    first = int(item_factors[0])
    per_first = math.prod(int(i) for i in item_factors[1:])
    if n + 1 > first * per_first:
        raise ValueError(f"{n} items (+ padding) do not fit in item factors {list(item_factors)}")
    capacity = torch.full((first,), per_first, dtype=torch.long)
    capacity[0] -= 1  # slot 0 is the padding id's
    centres, _ = kmeans(rows, first, iters=iters, seed=seed)
    cluster = balanced_assign(torch.cdist(rows, centres), capacity)
    residuals = rows - centres[cluster]
    slot_centres, _ = kmeans(residuals, per_first, iters=iters, seed=seed + 1)
    slots = torch.empty(n, dtype=torch.long)
    for c in range(first):  # one item per slot position within each cluster
        members = (cluster == c).nonzero().flatten()
        if not members.numel():
            continue
        room = torch.ones(per_first, dtype=torch.long)
        if c == 0:
            room[0] = 0  # slot 0 is the padding id's
        position = balanced_assign(torch.cdist(residuals[members], slot_centres), room)
        slots[members] = c * per_first + position
    return torch.cat([torch.zeros(1, dtype=torch.long), slots])
