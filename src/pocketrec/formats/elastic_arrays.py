"""Stored layout of an elastic item table (RULE; :mod:`pocketrec.tables.elastic`), numpy only: the writer's
encoders, the exact byte count, and one decoder shared by the torch table, the numpy runtime and the ONNX
builder.

An elastic table of ``n`` items, width ``D = N * b`` (``N`` blocks of width ``b``) and ``G`` item groups
under an architecture ``mask (G, N)`` (group ``g`` keeps the blocks ``S_g``) is stored as:

* ``groups``: uint8 1-D, the item group of items ``1..n`` bit-packed at :func:`group_bits` ``(G) =
  ceil(log2 G)`` bits each (layout: :mod:`pocketrec.formats.bitpack`); empty (0 bits) when ``G == 1``;
* ``mask``: uint8 1-D, the architecture in C order (group-major) bit-packed at 1 bit per entry;
* ``blocks/{g}`` for every group ``g`` in ``0..G-1``: ``(n_g, |S_g| * b)`` at the stored dtype (float32,
  float16 or int8), the group's items in increasing id order, the columns the kept blocks in increasing
  block index (block ``k`` of a row is columns ``j*b .. (j+1)*b`` where ``k`` is the ``j``-th kept block);
  a group without items has a ``(0, |S_g| * b)`` array;
* ``scales`` (int8 only): float32 ``(|mask|,)``, the scale of every *kept* ``(group, block)`` in C order of
  the mask: ``max |value|`` over that group's items in that block ``/ 127`` (a value is ``scale * int8``).
  So a kept block of group ``g`` costs ``n_g * b + 4`` bytes at int8, and a table's bytes stay linear in
  the mask's blocks.

* ``priority`` (only when the description has ``"priority": true``): the *block priority*, a permutation of
  the ``G * N`` flat indices ``g * N + k`` of the ``(group, block)`` pairs, highest priority first, stored
  as uint16 (uint32 when ``G * N > 65536``). It lets a device shrink the table to a smaller budget by itself
  (:func:`select_by_priority`; :mod:`pocketrec.device.np_resize`).

Dropped blocks are not stored at all, so the bytes are (:func:`elastic_nbytes`)::

    ceil(n * ceil(log2 G) / 8) + ceil(G * N / 8) + sum_g n_g * |S_g| * b * itemsize  (+ 4 * sum_g |S_g| for int8)
        (+ 2 * G * N, or 4 * G * N, with a priority)

Block priority and budgets (:func:`select_by_priority`, the one rule of the torch side's direct build and the
device's shrink, so the two agree by construction): every group first gets its highest-priority block (their
cost reserved up front, ``ValueError`` if even that does not fit), then the other pairs are taken in priority
order *while they fit*: the first pair that does not fit ends the selection (no later, smaller pair is taken
instead). So the architecture of a smaller budget is always a subset of a larger budget's (masks are nested),
shrinking only drops blocks and growing only adds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pocketrec.formats.bitpack import bits_for, pack_codes, packed_nbytes, unpack_codes

ELASTIC_DTYPES = ("float32", "float16", "int8")


def group_bits(num_groups: int) -> int:
    """Bits per stored item group: ``ceil(log2 G)``, 0 for a single group (nothing stored)."""
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    return 0 if num_groups == 1 else bits_for(num_groups)


def priority_dtype(num_pairs: int) -> np.dtype:
    """Stored dtype of a priority over ``num_pairs = G * N`` pairs: uint16, or uint32 beyond 65536 pairs."""
    return np.dtype(np.uint16) if num_pairs <= 1 << 16 else np.dtype(np.uint32)


def priority_nbytes(num_groups: int, num_blocks: int) -> int:
    """Bytes of the stored ``priority`` array of ``G`` groups of ``N`` blocks."""
    pairs = int(num_groups) * int(num_blocks)
    return pairs * priority_dtype(pairs).itemsize


def elastic_nbytes(group_sizes: np.ndarray | list[int], mask: np.ndarray, block_width: int,
                   dtype: str = "float32", with_priority: bool = False) -> int:
    """Exact bytes of the stored arrays (module docstring) for groups of ``group_sizes (G,)`` items under the
    architecture ``mask (G, N)``, blocks ``block_width`` wide stored at ``dtype``; ``with_priority``: the
    table also stores its block priority (:func:`priority_nbytes`)."""
    if dtype not in ELASTIC_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(ELASTIC_DTYPES)}, got {dtype!r}")
    mask = np.asarray(mask, dtype=bool)
    sizes = np.asarray(group_sizes, dtype=np.int64).reshape(-1)
    if mask.ndim != 2 or sizes.shape != (mask.shape[0],):
        raise ValueError(f"group_sizes {sizes.shape} and mask {mask.shape} disagree on the number of groups")
    num_groups, num_blocks = mask.shape
    kept = mask.sum(axis=1).astype(np.int64)
    total = packed_nbytes(int(sizes.sum()), group_bits(num_groups)) + packed_nbytes(num_groups * num_blocks, 1)
    total += int((sizes * kept).sum()) * int(block_width) * np.dtype(dtype).itemsize
    if dtype == "int8":
        total += 4 * int(kept.sum())
    if with_priority:
        total += priority_nbytes(num_groups, num_blocks)
    return int(total)


def block_costs(group_sizes: np.ndarray | list[int], num_blocks: int, block_width: int,
                dtype: str = "float32") -> np.ndarray:
    """Bytes ``(G, N)`` int64 that keeping block ``k`` of group ``g`` adds: ``n_g * b * itemsize`` (``+ 4``, its
    scale, at int8); the same for every block of a group."""
    if dtype not in ELASTIC_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(ELASTIC_DTYPES)}, got {dtype!r}")
    sizes = np.asarray(group_sizes, dtype=np.int64).reshape(-1)
    per_group = sizes * int(block_width) * np.dtype(dtype).itemsize + (4 if dtype == "int8" else 0)
    return np.repeat(per_group[:, None], int(num_blocks), axis=1)


def check_priority(priority: np.ndarray | list, num_groups: int, num_blocks: int) -> np.ndarray:
    """A block priority as flat indices ``(G * N,)`` int64 (``g * N + k``, highest first), from flat indices or
    ``(G * N, 2)`` ``(group, block)`` pairs; ``ValueError`` unless it is a permutation of every pair."""
    order = np.asarray(priority)
    pairs = int(num_groups) * int(num_blocks)
    if order.dtype == bool or not (np.issubdtype(order.dtype, np.integer) or order.size == 0):
        raise ValueError(f"a block priority holds integers (flat indices g * N + k or (group, block) pairs), "
                         f"got {order.dtype}")
    order = order.astype(np.int64)
    if order.ndim == 2 and order.shape[1] == 2:
        g, k = order[:, 0], order[:, 1]
        if order.size and (g.min() < 0 or g.max() >= num_groups or k.min() < 0 or k.max() >= num_blocks):
            raise ValueError(f"a block priority's pairs must lie in (0..{num_groups - 1}, 0..{num_blocks - 1})")
        order = g * int(num_blocks) + k
    if order.shape != (pairs,) or not np.array_equal(np.sort(order), np.arange(pairs)):
        raise ValueError(f"a block priority must order each of the {num_groups} x {num_blocks} (group, block) "
                         f"pairs exactly once ({pairs} flat indices g * N + k), got shape {order.shape}")
    return order


def encode_priority(priority: np.ndarray | list, num_groups: int, num_blocks: int) -> np.ndarray:
    """The stored ``priority`` array (:func:`check_priority`, then uint16 / uint32)."""
    order = check_priority(priority, num_groups, num_blocks)
    return order.astype(priority_dtype(order.size))


def decode_priority(stored: np.ndarray, num_groups: int, num_blocks: int) -> np.ndarray:
    """Inverse of :func:`encode_priority`: flat indices ``(G * N,)`` int64; ``ValueError`` for another dtype
    or anything but a permutation."""
    stored = np.asarray(stored)
    expected = priority_dtype(int(num_groups) * int(num_blocks))
    if stored.dtype != expected:
        raise ValueError(f"elastic priority must be {expected}, got {stored.dtype}")
    return check_priority(stored, num_groups, num_blocks)


def select_by_priority(priority: np.ndarray | list, group_sizes: np.ndarray | list[int], block_width: int,
                       dtype: str, budget_bytes: int, with_priority: bool = True) -> np.ndarray:
    """The architecture ``(G, N)`` bool a budget gets under a block priority (module docstring): each group's
    highest-priority block, then the remaining pairs in priority order while the table (:func:`elastic_nbytes`,
    the ``priority`` array counted when ``with_priority``) stays within ``budget_bytes``; the first pair that
    does not fit ends it. ``ValueError`` naming the smallest table when even one block per group does not fit.

    ``priority``: flat indices or ``(group, block)`` pairs (:func:`check_priority`; ``G = len(group_sizes)``,
    ``N = len(priority) / G``). Masks are nested in the budget, so this rule serves both a direct build and a
    device's in-place shrink.
    """
    sizes = np.asarray(group_sizes, dtype=np.int64).reshape(-1)
    num_groups = len(sizes)
    count = np.asarray(priority).shape[0] if np.asarray(priority).ndim else 0
    if num_groups < 1 or count % num_groups:
        raise ValueError(f"a block priority of {count} pairs does not fit {num_groups} item groups")
    num_blocks = count // num_groups
    order = check_priority(priority, num_groups, num_blocks)
    costs = block_costs(sizes, num_blocks, block_width, dtype).reshape(-1)[order]  # in priority order
    groups = order // num_blocks
    first = np.zeros(order.size, dtype=bool)  # each group's highest-priority pair
    _, at = np.unique(groups, return_index=True)
    first[at] = True
    empty = np.zeros((num_groups, num_blocks), dtype=bool)
    base = elastic_nbytes(sizes, empty, block_width, dtype, with_priority) + int(costs[first].sum())
    if base > int(budget_bytes):
        raise ValueError(f"budget {int(budget_bytes):,} B is below one block per item group ({base:,} B, the "
                         f"smallest {dtype} table of {num_groups} groups under this priority)")
    extra = np.cumsum(np.where(first, 0, costs))  # nondecreasing: the pairs that fit are a prefix
    fits = base + extra <= int(budget_bytes)
    stop = int(np.argmin(fits)) if not fits.all() else order.size
    take = first.copy()
    take[:stop] = True
    mask = np.zeros(num_groups * num_blocks, dtype=bool)
    mask[order[take]] = True
    return mask.reshape(num_groups, num_blocks)


def encode_groups(item_groups: np.ndarray, num_groups: int) -> np.ndarray:
    """The ``groups`` array: the groups of items ``1..n`` (``(n,)``, values in ``0..G-1``) bit-packed."""
    bits = group_bits(num_groups)
    if bits == 0:
        return np.zeros(0, dtype=np.uint8)
    return pack_codes(np.asarray(item_groups, dtype=np.int64), bits)


def decode_groups(packed: np.ndarray, num_items: int, num_groups: int) -> np.ndarray:
    """Inverse of :func:`encode_groups`: the group of every id ``(n + 1,)`` int64, entry 0 (padding) 0."""
    bits = group_bits(num_groups)
    packed = np.asarray(packed)
    expected = packed_nbytes(num_items, bits)
    if packed.dtype != np.uint8 or packed.shape != (expected,):
        raise ValueError(f"elastic groups must be ({expected},) uint8, got {packed.shape} {packed.dtype}")
    groups = np.zeros(num_items + 1, dtype=np.int64)
    if bits:
        groups[1:] = unpack_codes(packed, bits, num_items)
        if num_items and int(groups.max()) >= num_groups:
            raise ValueError(f"elastic item groups must lie in 0..{num_groups - 1}")
    return groups


def encode_mask(mask: np.ndarray) -> np.ndarray:
    """The ``mask`` array: a ``(G, N)`` architecture bit-packed at 1 bit per entry, C order."""
    return pack_codes(np.asarray(mask, dtype=bool).astype(np.uint8), 1)


def decode_mask(packed: np.ndarray, num_groups: int, num_blocks: int) -> np.ndarray:
    """Inverse of :func:`encode_mask`: ``(G, N)`` bool; ``ValueError`` when a group keeps no block."""
    packed = np.asarray(packed)
    expected = packed_nbytes(num_groups * num_blocks, 1)
    if packed.dtype != np.uint8 or packed.shape != (expected,):
        raise ValueError(f"elastic mask must be ({expected},) uint8, got {packed.shape} {packed.dtype}")
    mask = unpack_codes(packed, 1, num_groups * num_blocks).reshape(num_groups, num_blocks).astype(bool)
    empty = np.flatnonzero(~mask.any(axis=1))
    if len(empty):
        raise ValueError(f"every item group needs at least one block; group(s) {empty.tolist()} have none")
    return mask


@dataclass
class ElasticGroup:
    """One item group as stored: ``items (n_g,)`` int64 ids (increasing), ``kept (|S|,)`` int64 block indices
    (increasing), ``values (n_g, |S| * b)`` at the stored dtype (the exported array itself, not a copy) and
    ``scales (|S|,)`` float32 (ones unless int8): block ``kept[j]`` of item ``items[r]`` is
    ``values[r, j*b:(j+1)*b] * scales[j]``."""

    items: np.ndarray
    kept: np.ndarray
    values: np.ndarray
    scales: np.ndarray


def elastic_layout(description: dict[str, Any]) -> tuple[int, int, int, int, str]:
    """``(num_items, dim, num_blocks, num_groups, dtype)`` of a description, checked."""
    num_items, dim = int(description["num_items"]), int(description["dim"])
    num_blocks, num_groups = int(description["num_blocks"]), int(description["num_groups"])
    dtype = str(description.get("dtype", "float32"))
    if num_blocks < 1 or dim % num_blocks:
        raise ValueError(f"dim ({dim}) must be a multiple of num_blocks ({num_blocks})")
    if num_groups < 1:
        raise ValueError(f"num_groups must be >= 1, got {num_groups}")
    if dtype not in ELASTIC_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(ELASTIC_DTYPES)}, got {dtype!r}")
    return num_items, dim, num_blocks, num_groups, dtype


def elastic_groups(arrays: dict[str, np.ndarray], description: dict[str, Any]
                   ) -> tuple[np.ndarray, np.ndarray, list[ElasticGroup]]:
    """Decode and check an elastic table's exported arrays: ``(groups (n + 1,) int64, mask (G, N) bool,
    one ElasticGroup per group)``. ``ValueError`` for a missing or unexpected array, a shape or dtype that
    disagrees with the description, or a group without any block."""
    num_items, dim, num_blocks, num_groups, dtype = elastic_layout(description)
    width = dim // num_blocks
    names = {"groups", "mask", *(f"blocks/{g}" for g in range(num_groups))} | ({"scales"} if dtype == "int8" else set())
    if description.get("priority"):
        names.add("priority")
    if set(arrays) != names:
        missing, extra = sorted(names - set(arrays)), sorted(set(arrays) - names)
        raise ValueError(f"elastic table arrays do not match its description (missing {missing[:4]}, "
                         f"unexpected {extra[:4]})")
    groups = decode_groups(arrays["groups"], num_items, num_groups)
    mask = decode_mask(arrays["mask"], num_groups, num_blocks)
    if "priority" in names:
        decode_priority(arrays["priority"], num_groups, num_blocks)
    scales = None
    if dtype == "int8":
        scales = np.asarray(arrays["scales"])
        if scales.dtype != np.float32 or scales.shape != (int(mask.sum()),):
            raise ValueError(f"elastic scales must be ({int(mask.sum())},) float32 (one per kept block), got "
                             f"{scales.shape} {scales.dtype}")
        full = np.zeros(mask.shape, dtype=np.float32)
        full[mask] = scales
        scales = full
    order = np.argsort(groups[1:], kind="stable") + 1  # items by group, increasing id within a group
    bounds = np.concatenate([[0], np.cumsum(np.bincount(groups[1:], minlength=num_groups))])
    parts = []
    for g in range(num_groups):
        kept = np.flatnonzero(mask[g])
        values = arrays[f"blocks/{g}"]
        items = order[bounds[g]:bounds[g + 1]]
        expected = (len(items), len(kept) * width)
        if values.shape != expected or values.dtype != np.dtype(dtype):
            raise ValueError(f"elastic blocks/{g} must be {expected} {dtype}, got {values.shape} {values.dtype}")
        group_scales = np.ones(len(kept), dtype=np.float32) if scales is None else scales[g, kept]
        parts.append(ElasticGroup(items=items, kept=kept, values=values, scales=group_scales))
    return groups, mask, parts


def elastic_priority(arrays: dict[str, np.ndarray], description: dict[str, Any]) -> np.ndarray | None:
    """The stored block priority of an elastic table's arrays as flat indices ``(G * N,)`` int64, ``None`` when
    the table has none (its description has no ``"priority": true``)."""
    if not description.get("priority"):
        return None
    if "priority" not in arrays:
        raise ValueError("the elastic description announces a priority the arrays do not hold")
    return decode_priority(arrays["priority"], int(description["num_groups"]), int(description["num_blocks"]))
