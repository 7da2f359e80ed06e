"""The space of elastic-embedding architectures searched by RULE (Chen et al., KDD 2021), as plain numpy.

An *architecture* is a boolean mask ``(G, N)``: item group ``g`` (``n_g`` items) keeps the non-empty block
subset ``S_g`` of the ``N`` embedding blocks (see :mod:`pocketrec.tables.elastic_core`). Its size on the
device is

    ``cost(mask) = fixed_bytes + sum_g |S_g| * (n_g * block_bytes + block_overhead)``

where ``block_bytes`` is what one block of one item takes (``b * 4`` for fp32 blocks of width ``b``) and
``fixed_bytes`` anything paid whatever the architecture (the mask itself, a header, the query tower...).
The smallest architecture keeps one block per group, the largest all of them.

:class:`ArchitectureSpace` knows nothing of models or data: it prices masks, draws feasible ones, perturbs
them for the evolutionary search (:mod:`pocketrec.search.evolution`), gives the two hand-made allocations
used as baselines and seeds (:meth:`~ArchitectureSpace.uniform`, :meth:`~ArchitectureSpace.popularity`) and
encodes masks for the accuracy estimator (:mod:`pocketrec.search.estimator`). The paper specifies the
encoding and the evolutionary loop; how a random architecture is drawn, the mutation and the repair to a
budget are not specified there and are pocketrec's choices, documented on each method.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pocketrec.tables.elastic_core import check_architecture


@dataclass(eq=False)
class ArchitectureSpace:
    """Architectures of ``G = len(group_sizes)`` item groups x ``num_blocks`` blocks and their cost in bytes.

    ``group_sizes (G,)``: items per group; ``block_bytes``: bytes of one block of one item;
    ``fixed_bytes``: bytes paid by every architecture. Every method returning a mask returns a fresh boolean
    array ``(G, N)`` that keeps at least one block per group.
    """

    group_sizes: np.ndarray
    num_blocks: int
    block_bytes: int
    fixed_bytes: int = 0
    #: bytes every kept (group, block) pays whatever its group's size (e.g. an int8 block's float32 scale)
    block_overhead: int = 0

    def __post_init__(self) -> None:
        sizes = np.asarray(self.group_sizes)
        if sizes.ndim != 1 or len(sizes) == 0:
            raise ValueError(f"group_sizes must be a non-empty 1-D array, got shape {sizes.shape}")
        if not np.issubdtype(sizes.dtype, np.integer):
            if not np.all(np.isfinite(sizes)) or np.any(sizes != np.round(sizes)):
                raise ValueError("group_sizes must be whole numbers of items")
        if np.any(sizes < 0):
            raise ValueError("group_sizes must not be negative")
        self.group_sizes = sizes.astype(np.int64)
        if int(self.num_blocks) < 1:
            raise ValueError(f"num_blocks must be at least 1, got {self.num_blocks}")
        if int(self.block_bytes) < 1:
            raise ValueError(f"block_bytes must be at least 1, got {self.block_bytes}")
        if int(self.fixed_bytes) < 0:
            raise ValueError(f"fixed_bytes must not be negative, got {self.fixed_bytes}")
        if int(self.block_overhead) < 0:
            raise ValueError(f"block_overhead must not be negative, got {self.block_overhead}")
        self.num_blocks, self.block_bytes, self.fixed_bytes, self.block_overhead = (
            int(self.num_blocks), int(self.block_bytes), int(self.fixed_bytes), int(self.block_overhead))
        # bytes of one block for every item of group g (plus the block's own overhead)
        self._unit = self.group_sizes * self.block_bytes + self.block_overhead

    # ------------------------------------------------------------------ pricing

    @property
    def num_groups(self) -> int:
        return len(self.group_sizes)

    @property
    def shape(self) -> tuple[int, int]:
        """``(G, N)``, the shape of one mask."""
        return self.num_groups, self.num_blocks

    def check(self, mask: np.ndarray) -> np.ndarray:
        """``mask`` as a boolean ``(G, N)`` array; ``ValueError`` for another shape or an empty group."""
        return check_architecture(mask, self.num_groups, self.num_blocks)

    def cost(self, mask: np.ndarray) -> int:
        """Bytes of one architecture: ``fixed_bytes + sum_g |S_g| * (n_g * block_bytes + block_overhead)``."""
        mask = self.check(mask)
        return self.fixed_bytes + int(mask.sum(axis=1) @ self._unit)

    def costs(self, masks: np.ndarray) -> np.ndarray:
        """Bytes ``(K,)`` int64 of a stack of masks ``(K, G, N)`` (not checked for empty groups)."""
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[1:] != self.shape:
            raise ValueError(f"expected masks of shape (K, {self.num_groups}, {self.num_blocks}), got {masks.shape}")
        return self.fixed_bytes + masks.astype(bool).sum(axis=2).astype(np.int64) @ self._unit

    def min_cost(self) -> int:
        """Bytes of the smallest architecture (one block per group)."""
        return self.fixed_bytes + int(self._unit.sum())

    def max_cost(self) -> int:
        """Bytes of the full architecture (every block for every group)."""
        return self.fixed_bytes + int(self._unit.sum()) * self.num_blocks

    def _check_budget(self, budget: int) -> int:
        budget = int(budget)
        if budget < self.min_cost():
            raise ValueError(f"budget {budget:,} B is below the smallest architecture (one block per item group), "
                             f"which needs {self.min_cost():,} B: give at least {self.min_cost()} bytes")
        return budget

    # ------------------------------------------------------------------ sampling and perturbation

    def random(self, rng: np.random.Generator, budget: int) -> np.ndarray:
        """A random architecture costing at most ``budget`` bytes.

        pocketrec's sampler (the paper does not say how): draw a target size uniformly between the smallest
        architecture and ``min(budget, max_cost())``, start from one random block per group, then add the
        remaining (group, block) pairs in a random order while the total stays within the target. Sizes are
        thus spread over the whole feasible range rather than piled up at the budget or at the minimum, and
        blocks are spread evenly over groups in expectation. ``ValueError`` when ``budget < min_cost()``.
        """
        budget = self._check_budget(budget)
        lo, hi = self.min_cost(), min(budget, self.max_cost())
        target = int(rng.integers(lo, hi + 1))
        G, N = self.shape
        mask = np.zeros((G, N), dtype=bool)
        mask[np.arange(G), rng.integers(0, N, size=G)] = True
        free = np.flatnonzero(~mask.ravel())
        order = rng.permutation(free)
        unit = self._unit[order // N]
        take = np.cumsum(unit) <= target - lo
        mask.ravel()[order[take]] = True
        return mask

    def mutate(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A copy of ``mask`` with one block bit of one random group flipped, never leaving a group empty.

        pocketrec's mutation (the paper's search is evolutionary but does not give the operator): a group
        is drawn uniformly, then one of the bits whose flip keeps the group non-empty (every bit, or the
        ``N - 1`` absent ones when the group has a single block). The child may exceed a budget; pass it
        through :meth:`repair`. With ``N = 1`` nothing can change and a copy is returned.
        """
        child = self.check(mask).copy()
        G, N = self.shape
        if N == 1:
            return child
        g = int(rng.integers(G))
        row = child[g]
        allowed = np.flatnonzero(~row) if row.sum() == 1 else np.arange(N)
        k = int(allowed[rng.integers(len(allowed))])
        row[k] = not row[k]
        return child

    def repair(self, mask: np.ndarray, rng: np.random.Generator, budget: int, *, fill: bool = False) -> np.ndarray:
        """A copy of ``mask`` that costs at most ``budget``; with ``fill``, also grown until nothing else fits.

        pocketrec's repair (not in the paper): while over budget, remove a random block of a random group
        that has more than one (the present blocks are visited in a random order, so one pass always
        suffices). ``fill=True`` then visits the absent blocks in a random order and adds each one that still
        fits, so the architecture uses the budget (the search fills its children: an unused byte is wasted
        accuracy). ``ValueError`` when ``budget < min_cost()``.
        """
        budget = self._check_budget(budget)
        child = self.check(mask).copy()
        N = self.num_blocks
        flat = child.ravel()
        total = self.cost(child)
        if total > budget:
            counts = child.sum(axis=1)
            for idx in rng.permutation(np.flatnonzero(flat)):
                if total <= budget:
                    break
                g = idx // N
                if counts[g] > 1:
                    flat[idx] = False
                    counts[g] -= 1
                    total -= int(self._unit[g])
        if fill:
            room = budget - total
            for idx in rng.permutation(np.flatnonzero(~flat)):
                unit = int(self._unit[idx // N])
                if unit <= room:
                    flat[idx] = True
                    room -= unit
        return child

    def sample_for_labels(self, count: int, rng: np.random.Generator, budget: int | None = None) -> np.ndarray:
        """Up to ``count`` *distinct* random architectures ``(K, G, N)`` to label for the accuracy estimator.

        Drawn with :meth:`random` up to ``budget`` (default: the full architecture's size), so their sizes
        spread from the smallest architecture to the budget: the estimator must rank architectures of every
        size the search may meet. Fewer than ``count`` come back only when the space (or the part of it
        within the budget) is too small to hold that many distinct ones (after ``50 * count`` draws).
        """
        if count < 0:
            raise ValueError(f"count must not be negative, got {count}")
        budget = self.max_cost() if budget is None else self._check_budget(budget)
        seen: set[bytes] = set()
        out: list[np.ndarray] = []
        for _ in range(50 * count):
            if len(out) >= count:
                break
            mask = self.random(rng, budget)
            key = np.packbits(mask).tobytes()
            if key not in seen:
                seen.add(key)
                out.append(mask)
        return np.stack(out) if out else np.zeros((0, *self.shape), dtype=bool)

    # ------------------------------------------------------------------ hand-made allocations

    def uniform(self, budget: int) -> np.ndarray:
        """The first ``k`` blocks for every group, with the largest ``k`` that fits the budget: a plain
        narrower model (``k * D / N`` wide). ``ValueError`` when not even ``k = 1`` fits."""
        budget = self._check_budget(budget)
        per_block = int(self._unit.sum())
        k = self.num_blocks if per_block == 0 else min(self.num_blocks, (budget - self.fixed_bytes) // per_block)
        mask = np.zeros(self.shape, dtype=bool)
        mask[:, :k] = True
        return mask

    def popularity(self, budget: int, weights: np.ndarray) -> np.ndarray:
        """Blocks per group proportional to ``weights (G,)`` (e.g. each group's share of the interactions),
        at least 1 and at most ``N`` each, the first blocks of each group kept.

        ``k_g(s) = clip(floor(s * w_g / max w), 1, N)`` with the largest scale ``s`` whose cost fits; the bytes
        left are then spent greedily, one block at a time, on the group next in line as ``s`` grows (the
        furthest below its share) among those whose next block still fits, until none fits. ``ValueError``
        when the budget is below the smallest architecture or the weights are not finite, non-negative and
        not all zero.
        """
        budget = self._check_budget(budget)
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (self.num_groups,):
            raise ValueError(f"weights must have shape ({self.num_groups},), got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0) or not np.any(w > 0):
            raise ValueError("weights must be finite, non-negative and not all zero")
        w = w / w.max()
        N = self.num_blocks

        def blocks(scales: np.ndarray) -> np.ndarray:  # (S,) -> (S, G)
            return np.clip(np.floor(scales[:, None] * w[None, :] + 1e-9), 1, N).astype(np.int64)

        positive = w > 0
        # k_g changes only at s = j / w_g: try every such breakpoint (plus 0) and keep the largest that fits
        breaks = np.unique(np.concatenate([[0.0], (np.arange(1, N + 1)[None, :] / w[positive, None]).ravel()]))
        fits = self.fixed_bytes + blocks(breaks) @ self._unit <= budget
        scale = breaks[np.flatnonzero(fits)[-1]]  # s = 0 (one block each) always fits
        k = blocks(np.array([scale]))[0]
        room = budget - self.fixed_bytes - int(k @ self._unit)
        # next in line: the group whose next block would arrive first as s grows (weight-0 groups last),
        # among those whose next block still fits; repeated until nothing fits
        order = np.arange(self.num_groups)
        while True:
            open_ = (k < N) & (self._unit <= room)
            if not open_.any():
                break
            with np.errstate(divide="ignore"):
                arrival = np.where(positive, (k + 1) / np.where(positive, w, 1.0), np.inf)
            arrival = np.where(open_, arrival, np.nan)
            g = int(order[open_][np.lexsort((order[open_], arrival[open_]))[0]])
            k[g] += 1
            room -= int(self._unit[g])
        mask = np.arange(N)[None, :] < k[:, None]
        return mask

    # ------------------------------------------------------------------ encoding for the estimator

    def encode(self, masks: np.ndarray) -> np.ndarray:
        """RULE's encoding ``(K, G, G + N)`` float32 of masks ``(K, G, N)`` (or one ``(G, N)``): row ``g`` is
        ``[one_hot_G(g); multi_hot_N(S_g)]``, the group's identity then its block subset."""
        masks = np.asarray(masks)
        if masks.ndim == 2:
            masks = masks[None]
        if masks.ndim != 3 or masks.shape[1:] != self.shape:
            raise ValueError(f"expected masks of shape (K, {self.num_groups}, {self.num_blocks}), got {masks.shape}")
        K, G = len(masks), self.num_groups
        out = np.zeros((K, G, G + self.num_blocks), dtype=np.float32)
        out[:, np.arange(G), np.arange(G)] = 1.0
        out[:, :, G:] = masks.astype(bool)
        return out


@dataclass(eq=False)
class PrefixSpace(ArchitectureSpace):
    """The architectures where every group keeps its *first* ``k_g`` blocks (``1 <= k_g <= N``): ``N^G`` of them
    instead of ``(2^N - 1)^G``.

    pocketrec's space for blocks ordered by importance (the principal rotation of
    :func:`pocketrec.methods.rule.principal_rotation`: block 1 carries the most variance of the items, so
    a group's best ``k`` blocks are its first ``k``). Random draws, mutation (one group one block longer or
    shorter) and repair (shorten random groups; with ``fill``, lengthen random groups while they fit) keep
    every mask a prefix; pricing, the baselines and the encoding are the general space's.
    """

    @staticmethod
    def lengths(mask: np.ndarray) -> np.ndarray:
        return np.asarray(mask, dtype=bool).sum(axis=1).astype(np.int64)

    def of_lengths(self, lengths: np.ndarray) -> np.ndarray:
        """The prefix mask ``(G, N)`` of ``lengths (G,)``."""
        return np.arange(self.num_blocks)[None, :] < np.asarray(lengths)[:, None]

    def _grow(self, k: np.ndarray, room: int, rng: np.random.Generator) -> np.ndarray:
        """Lengthen random groups by one block at a time while ``room`` bytes allow (each group visited up to
        ``N - 1`` times, in a random order)."""
        for g in rng.permutation(np.repeat(np.arange(self.num_groups), self.num_blocks - 1)):
            if k[g] < self.num_blocks and self._unit[g] <= room:
                k[g] += 1
                room -= int(self._unit[g])
        return k

    def random(self, rng: np.random.Generator, budget: int) -> np.ndarray:
        """A random prefix architecture of a size drawn uniformly between the smallest and ``budget``."""
        budget = self._check_budget(budget)
        lo, hi = self.min_cost(), min(budget, self.max_cost())
        target = int(rng.integers(lo, hi + 1))
        return self.of_lengths(self._grow(np.ones(self.num_groups, dtype=np.int64), target - lo, rng))

    def mutate(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One random group one block longer or shorter (within ``1..N``)."""
        k = self.lengths(self.check(mask))
        if self.num_blocks == 1:
            return self.of_lengths(k)
        g = int(rng.integers(self.num_groups))
        step = 1 if k[g] == 1 else -1 if k[g] == self.num_blocks else int(rng.choice([-1, 1]))
        k[g] += step
        return self.of_lengths(k)

    def repair(self, mask: np.ndarray, rng: np.random.Generator, budget: int, *, fill: bool = False) -> np.ndarray:
        """Shorten random groups until the budget holds; with ``fill``, then lengthen random ones while they fit."""
        budget = self._check_budget(budget)
        k = self.lengths(self.check(mask))
        total = self.fixed_bytes + int(k @ self._unit)
        while total > budget:
            g = int(rng.choice(np.flatnonzero(k > 1)))
            k[g] -= 1
            total -= int(self._unit[g])
        if fill:
            k = self._grow(k, budget - total, rng)
        return self.of_lengths(k)
