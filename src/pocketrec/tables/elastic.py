"""Elastic item table (RULE: Chen et al., "Learning Elastic Embeddings for Customizing On-Device
Recommenders", KDD 2021).

Every item's vector of width ``D`` is ``N`` blocks of width ``b = D / N``; items fall into ``G`` item groups
and an *architecture* ``mask (G, N)`` lets group ``g`` keep only a non-empty subset ``S_g`` of the blocks.
One set of trained blocks serves every architecture: a device with a smaller budget stores fewer blocks
per group (popular items keep more), with no retraining. The arithmetic lives in
:mod:`pocketrec.tables.elastic_core` (see its docstring); in short, the two scorings of a query ``u`` (split
into chunks ``u_1..u_N``, ``u_bar = sum_j u_j``):

* ``"shared"`` (RULE's own): ``(N / |S|) * sum_{k in S} <u_bar, e_k>``. Every block meets the whole query, so
  any subset scores on the scale of the full architecture (each block estimates the same ``b``-wide item
  vector; fewer blocks average fewer estimates), which is what lets one set of blocks serve every
  architecture. The cost: even the full model ranks in ``b`` dimensions (``<u_bar, sum_k e_k>``).
* ``"aligned"``: ``sum_{k in S} <u_k, e_k>``; the full architecture is the plain ``D``-wide dot product (a
  dense teacher's score, see :meth:`ElasticTable.from_rows`), a subset a partial one (no rescale: see
  :mod:`pocketrec.tables.elastic_core`).

Both are a dot product with an *effective row* of width ``D`` (:meth:`ElasticTable.effective`).

``dtype`` is the stored precision of the blocks: float32, float16, or int8 (symmetric, one float32 scale per
``(item group, block)``: ``max |value|`` over the group's items in that block ``/ 127``; per-row scales would
cost more bytes than small blocks). Training keeps float32 master weights and every lookup sees them at the
stored precision (straight-through gradients), as the other tables do. The export holds only the kept blocks
(layout and byte count: :mod:`pocketrec.formats.elastic_arrays`), so ``nbytes()`` depends on the
architecture; :meth:`ElasticTable.bytes_for` gives it without a table, for an architecture search.

A *block priority* (:meth:`ElasticTable.set_priority`: a permutation of the ``(group, block)`` pairs, highest
first) makes an export resizable on the device: it is exported as the small ``priority`` array (counted in
``nbytes()``; the description then says ``"priority": true``; without one the export is as before), and
:meth:`ElasticTable.priority_architecture` gives the architecture of a budget under it
(:func:`~pocketrec.formats.elastic_arrays.select_by_priority`), the one a device shrinking a larger export of
this table computes too (:mod:`pocketrec.device.np_resize`). The priority is an attribute, not a buffer: it is not
in the state dict (a checkpoint does not restore it), set it before exporting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pocketrec.formats.elastic_arrays import (
    ELASTIC_DTYPES,
    check_priority,
    elastic_groups,
    elastic_nbytes,
    elastic_priority,
    encode_groups,
    encode_mask,
    encode_priority,
    select_by_priority,
)
from pocketrec.tables.base import (
    ItemTable,
    as_stored,
    check_stored_dtype,
    mask_padding_column,
    normalise_row_norms,
    register_table,
)
from pocketrec.tables.elastic_core import check_architecture, check_scoring, effective_rows, item_groups

#: Default ``num_groups`` of :meth:`ElasticTable.for_budget` (clipped to the number of items).
DEFAULT_NUM_GROUPS = 20
#: Largest default ``num_blocks`` of :meth:`ElasticTable.for_budget` (the largest divisor of ``dim`` up to it).
DEFAULT_MAX_BLOCKS = 8
_INT8_TOP = 127


def leading_blocks(num_groups: int, num_blocks: int, k: int) -> np.ndarray:
    """The uniform architecture ``(G, N)`` where every group keeps the first ``k`` blocks."""
    if not 1 <= k <= num_blocks:
        raise ValueError(f"k must lie in 1..{num_blocks}, got {k}")
    mask = np.zeros((num_groups, num_blocks), dtype=bool)
    mask[:, :k] = True
    return mask


def default_num_blocks(dim: int, max_blocks: int = DEFAULT_MAX_BLOCKS) -> int:
    """The largest divisor of ``dim`` that is at most ``max_blocks``."""
    return max(n for n in range(1, max(1, min(max_blocks, dim)) + 1) if dim % n == 0)


def _quantize_blocks(blocks: Tensor, scales: Tensor) -> Tensor:
    """int8 values (as ``blocks``' float dtype) of ``blocks (R, N, b)`` with per-row-and-block ``scales (R, N)``:
    ``round(x / scale)`` clipped to ``-127..127``; a zero scale gives zeros."""
    safe = torch.where(scales > 0, scales, torch.ones_like(scales)).unsqueeze(-1)
    return torch.round(blocks / safe).clamp_(-_INT8_TOP, _INT8_TOP)


@register_table
class ElasticTable(ItemTable):
    """Parameter ``blocks (num_items + 1, N, b)`` (float32 master weights, row 0 zero); buffers ``groups
    (num_items + 1,)`` long (each id's item group, entry 0 = padding) and ``mask (G, N)`` bool, the current
    architecture (all blocks by default). Both buffers are saved in the state dict, so a checkpoint restores
    them. A fresh table's blocks are drawn from ``N(0, init_std^2)``. See the module docstring for the
    scorings and the stored precisions.
    """

    kind = "elastic"

    def __init__(self, num_items: int, dim: int, num_blocks: int, groups: np.ndarray | Tensor, num_groups: int,
                 scoring: str = "shared", dtype: str = "float32", init_std: float = 0.02) -> None:
        super().__init__(num_items, dim)
        if num_blocks < 1 or dim % num_blocks:
            raise ValueError(f"dim ({dim}) must be a multiple of num_blocks ({num_blocks})")
        if num_groups < 1:
            raise ValueError(f"num_groups must be >= 1, got {num_groups}")
        check_scoring(scoring)
        check_stored_dtype(dtype, ELASTIC_DTYPES)
        self.num_blocks = int(num_blocks)
        self.block_width = self.dim // self.num_blocks
        self.num_groups = int(num_groups)
        self.scoring = scoring
        self.stored_dtype = dtype
        self.blocks = nn.Parameter(torch.empty(self.num_rows, self.num_blocks, self.block_width))
        self.register_buffer("groups", torch.zeros(self.num_rows, dtype=torch.long))
        self.register_buffer("mask", torch.ones(self.num_groups, self.num_blocks, dtype=torch.bool))
        #: the block priority (flat indices ``g * N + k``, highest first) or ``None``: :meth:`set_priority`
        self.priority: np.ndarray | None = None
        self.set_groups(groups)
        with torch.no_grad():
            self.blocks.normal_(0.0, init_std)
            self.blocks[0].zero_()

    # ---- groups and architectures -----------------------------------------------------------------

    def set_groups(self, groups: np.ndarray | Tensor) -> None:
        """Replace the item groups: ``(num_items + 1,)`` ints in ``0..G-1`` (entry 0, the padding id, is
        stored as 0 whatever it holds)."""
        groups = torch.as_tensor(np.asarray(groups) if not isinstance(groups, Tensor) else groups)
        if tuple(groups.shape) != (self.num_rows,):
            raise ValueError(f"groups must have shape ({self.num_rows},) (entry 0 = padding), "
                             f"got {tuple(groups.shape)}")
        if groups.dtype.is_floating_point or groups.dtype == torch.bool:
            raise ValueError(f"groups must be integers, got {groups.dtype}")
        items = groups[1:]
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= self.num_groups):
            raise ValueError(f"item groups must lie in 0..{self.num_groups - 1}")
        with torch.no_grad():
            self.groups.copy_(groups.to(self.groups.device, torch.long))
            self.groups[0] = 0

    def group_sizes(self) -> np.ndarray:
        """Items per group ``(G,)`` int64 (padding not counted)."""
        return np.bincount(self.groups[1:].cpu().numpy(), minlength=self.num_groups).astype(np.int64)

    def set_architecture(self, mask: np.ndarray | Tensor) -> None:
        """Set the architecture: a ``(G, N)`` mask where every group keeps at least one block (``ValueError``
        otherwise, :func:`~pocketrec.tables.elastic_core.check_architecture`). Groups without items too."""
        checked = check_architecture(mask, self.num_groups, self.num_blocks)
        self.mask.copy_(torch.from_numpy(checked).to(self.mask.device))

    def architecture(self) -> np.ndarray:
        """A copy of the current architecture ``(G, N)`` bool."""
        return self.mask.cpu().numpy().copy()

    @contextmanager
    def using(self, mask: np.ndarray | Tensor) -> Iterator[ElasticTable]:
        """Use the architecture ``mask`` inside the ``with`` block and restore the previous one after (training
        samples a random sub-architecture per step this way)."""
        before = self.mask.clone()
        self.set_architecture(mask)
        try:
            yield self
        finally:
            self.mask.copy_(before)

    def set_priority(self, priority: np.ndarray | list | None) -> None:
        """Set the block priority: a permutation of every ``(group, block)`` pair, highest first, as flat indices
        ``g * N + k`` or ``(G * N, 2)`` pairs (``ValueError`` otherwise); ``None`` removes it. Exported (and
        counted in :meth:`nbytes`) only when set."""
        self.priority = None if priority is None else check_priority(priority, self.num_groups, self.num_blocks)

    def priority_architecture(self, budget_bytes: int) -> np.ndarray:
        """The architecture ``(G, N)`` this table's priority gives ``budget_bytes`` (the exported table, priority
        array included, fits it): :func:`~pocketrec.formats.elastic_arrays.select_by_priority`, the rule a device
        shrinking a larger export applies. ``with table.using(table.priority_architecture(B)): table.export()``
        is the artifact of budget ``B`` built directly. ``ValueError`` without a priority or when one block
        per group does not fit."""
        if self.priority is None:
            raise ValueError("this elastic table has no block priority: set_priority(...) first")
        return select_by_priority(self.priority, self.group_sizes(), self.block_width, self.stored_dtype,
                                  int(budget_bytes), with_priority=True)

    # ---- sizes ------------------------------------------------------------------------------------

    @staticmethod
    def bytes_for(group_sizes: np.ndarray | list[int], mask: np.ndarray | Tensor, block_width: int,
                  dtype: str = "float32", with_priority: bool = False) -> int:
        """Bytes of an elastic table without building it: groups of ``group_sizes (G,)`` items under the
        architecture ``mask (G, N)``, blocks of width ``block_width`` stored at ``dtype``::

            ceil(n * ceil(log2 G) / 8) + ceil(G * N / 8) + sum_g n_g * |S_g| * b * itemsize
                (+ 4 * sum_g |S_g| for int8)

        (:func:`~pocketrec.formats.elastic_arrays.elastic_nbytes`): a fixed part plus ``n_g * b * itemsize``
        for every block ``k`` group ``g`` keeps; ``with_priority`` adds the stored block priority.
        """
        mask = mask.detach().cpu().numpy() if isinstance(mask, Tensor) else np.asarray(mask)
        return elastic_nbytes(group_sizes, mask, block_width, dtype, with_priority)

    def architecture_bytes(self, mask: np.ndarray | Tensor) -> int:
        """:meth:`nbytes` this table would have under the architecture ``mask`` (it is not set); its priority
        array counts when one is set."""
        return self.bytes_for(self.group_sizes(), mask, self.block_width, self.stored_dtype,
                              with_priority=self.priority is not None)

    def nbytes(self) -> int:
        return self.architecture_bytes(self.mask)

    # ---- rows and scores --------------------------------------------------------------------------

    def block_scales(self) -> Tensor:
        """int8 scales ``(G, N)`` float32 (no gradient): ``max |value|`` over each group's items in each block
        ``/ 127`` (0 for a group without items)."""
        with torch.no_grad():
            absmax = self.blocks[1:].detach().float().abs().amax(dim=-1)  # (n, N)
            out = torch.zeros(self.num_groups, self.num_blocks, device=absmax.device)
            index = self.groups[1:].unsqueeze(1).expand(-1, self.num_blocks)
            out.scatter_reduce_(0, index, absmax, reduce="amax", include_self=True)
            return out / _INT8_TOP

    def stored_blocks(self, ids: Tensor | None = None) -> Tensor:
        """The blocks ``(R, N, b)`` of ``ids (R,)`` (all rows when ``None``) at the stored precision, gradients
        passed straight through to the master weights; the padding id gives zeros."""
        if ids is None:
            ids, blocks, groups = torch.arange(self.num_rows, device=self.blocks.device), self.blocks, self.groups
        else:
            blocks, groups = self.blocks[ids], self.groups[ids]
        if self.stored_dtype == "int8":
            scales = self.block_scales()[groups]  # (R, N)
            rounded = _quantize_blocks(blocks.detach(), scales) * scales.unsqueeze(-1)
            blocks = blocks + (rounded - blocks).detach()
        else:
            blocks = as_stored(blocks, self.stored_dtype)
        return blocks * (ids != 0).to(blocks.dtype).view(-1, 1, 1)

    def effective(self) -> Tensor:
        """Effective rows ``(num_items + 1, dim)`` under the current architecture (row 0 zeros), differentiable
        in the blocks: ``score(u) = u @ effective().T`` (:func:`~pocketrec.tables.elastic_core.effective_rows`)."""
        return effective_rows(self.stored_blocks(), self.groups, self.mask, self.scoring)

    def shared_rows(self) -> Tensor:
        """For the ``"shared"`` scoring: the ``(num_items + 1, b)`` rows ``(N / |S|) * sum_{k in S} e_k`` whose
        product with ``u_bar`` is the score (:meth:`effective` is these tiled ``N`` times)."""
        keep = self.mask.to(self.blocks.dtype)[self.groups]  # (R, N)
        scale = self.num_blocks / keep.sum(dim=1).clamp_min(1.0)
        return (self.stored_blocks() * keep.unsqueeze(-1)).sum(dim=1) * scale.unsqueeze(-1)

    def forward(self, ids: Tensor) -> Tensor:
        flat = ids.reshape(-1)
        rows = effective_rows(self.stored_blocks(flat), self.groups[flat], self.mask, self.scoring)
        return rows.reshape(*ids.shape, self.dim)

    def score(self, queries: Tensor) -> Tensor:
        """``queries @ effective().T`` with column 0 masked; the shared scoring computes it in ``b`` dims
        (``u_bar @ shared_rows().T``, the same value)."""
        if self.scoring == "shared":
            u_bar = queries.reshape(queries.shape[0], self.num_blocks, self.block_width).sum(dim=1)
            return mask_padding_column(u_bar @ self.shared_rows().to(queries.dtype).t())
        return mask_padding_column(queries @ self.effective().to(queries.dtype).t())

    def all_rows(self) -> Tensor:
        return self.effective()

    def row_norms(self, chunk: int = 16384) -> Tensor:
        """Norms of the effective rows in one pass (shared: ``sqrt(N)`` times the norm of the ``b``-wide row)."""
        if self.scoring == "shared":
            return normalise_row_norms(self.shared_rows().norm(dim=-1) * self.num_blocks ** 0.5)
        return normalise_row_norms(self.effective().norm(dim=-1))

    # ---- export -----------------------------------------------------------------------------------

    def export(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Only the kept blocks of every group (:mod:`pocketrec.formats.elastic_arrays`): ``groups`` (bit-packed
        at ``ceil(log2 G)`` bits), ``mask`` (bit-packed at 1 bit), ``blocks/{g}`` ``(n_g, |S_g| * b)`` at the
        stored dtype, and for int8 ``scales`` float32, one per kept block (C order of the mask)."""
        with torch.no_grad():
            groups = self.groups.cpu().numpy()
            mask = self.architecture()
            blocks = self.blocks.detach().float()
            if self.stored_dtype == "int8":
                scale_table = self.block_scales()
                stored = _quantize_blocks(blocks, scale_table[self.groups]).to(torch.int8).cpu().numpy()
                scales = scale_table.cpu().numpy()
            else:
                stored = blocks.to(getattr(torch, self.stored_dtype)).cpu().numpy()
        arrays: dict[str, np.ndarray] = {"groups": encode_groups(groups[1:], self.num_groups),
                                         "mask": encode_mask(mask)}
        for g in range(self.num_groups):
            items, kept = np.flatnonzero(groups[1:] == g) + 1, np.flatnonzero(mask[g])
            arrays[f"blocks/{g}"] = np.ascontiguousarray(
                stored[items][:, kept].reshape(len(items), len(kept) * self.block_width))
        if self.stored_dtype == "int8":
            arrays["scales"] = np.ascontiguousarray(scales[mask], dtype=np.float32)
        if self.priority is not None:
            arrays["priority"] = encode_priority(self.priority, self.num_groups, self.num_blocks)
        return arrays, self.description()

    def description(self) -> dict[str, Any]:
        """The JSON-able description ``export()`` returns (``"priority": true`` only when a priority is set)."""
        out = {"kind": self.kind, "num_items": self.num_items, "dim": self.dim, "num_blocks": self.num_blocks,
               "num_groups": self.num_groups, "scoring": self.scoring, "dtype": self.stored_dtype}
        if self.priority is not None:
            out["priority"] = True
        return out

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> ElasticTable:
        """The untrained structure: every item in group 0 and the full architecture (a checkpoint's state dict
        then restores ``blocks``, ``groups`` and ``mask``)."""
        if description.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"description is of kind {description.get('kind')!r}, not {cls.kind!r}")
        num_items = int(description["num_items"])
        return cls(num_items, int(description["dim"]), int(description["num_blocks"]),
                   np.zeros(num_items + 1, dtype=np.int64), int(description["num_groups"]),
                   scoring=str(description.get("scoring", "shared")), dtype=str(description.get("dtype", "float32")))

    @classmethod
    def from_export(cls, arrays: dict[str, np.ndarray], description: dict[str, Any]) -> ElasticTable:
        """The table ``export()`` describes: its groups and architecture, the kept blocks decoded (int8 times
        their scales) and the dropped ones zeros, so its effective rows are the exported ones."""
        table = cls.from_description(description)
        groups, mask, parts = elastic_groups(arrays, description)
        table.set_groups(groups)
        table.set_architecture(mask)
        table.set_priority(elastic_priority(arrays, description))
        blocks = np.zeros((table.num_rows, table.num_blocks, table.block_width), dtype=np.float32)
        for part in parts:
            values = part.values.astype(np.float32).reshape(len(part.items), len(part.kept), table.block_width)
            blocks[np.ix_(part.items, part.kept)] = values * part.scales[None, :, None]
        with torch.no_grad():
            table.blocks.copy_(torch.from_numpy(blocks))
        return table

    # ---- constructors -----------------------------------------------------------------------------

    @classmethod
    def from_rows(cls, rows: Tensor, num_blocks: int, groups: np.ndarray | Tensor, num_groups: int,
                  scoring: str = "shared", dtype: str = "float32") -> ElasticTable:
        """A table whose blocks are ``rows (num_items + 1, D)`` cut into ``num_blocks`` (row 0 = padding, kept
        at zero). With the ``"aligned"`` scoring and the full architecture it scores exactly as the rows do."""
        if rows.dim() != 2 or rows.shape[0] < 2:
            raise ValueError(f"rows must be (num_items + 1, dim), got shape {tuple(rows.shape)}")
        table = cls(rows.shape[0] - 1, rows.shape[1], num_blocks, groups, num_groups, scoring=scoring, dtype=dtype)
        with torch.no_grad():
            table.blocks.copy_(rows.detach().float().reshape(table.num_rows, table.num_blocks, table.block_width))
            table.blocks[0].zero_()
        return table.to(rows.device)

    @classmethod
    def for_budget(cls, num_items: int, dim: int, budget_bytes: int, num_blocks: int | None = None,
                   num_groups: int | None = None, groups: np.ndarray | Tensor | None = None,
                   scoring: str = "shared", dtype: str = "float32", **kwargs: Any) -> ElasticTable:
        """The uniform architecture with the most blocks per group (every group keeps blocks ``0..k-1``) whose
        table fits ``budget_bytes``; ``kwargs`` (``init_std``) go to the constructor.

        ``num_blocks`` defaults to the largest divisor of ``dim`` up to 8. ``groups`` defaults to
        ``num_groups`` (default 20, clipped to ``num_items``) equal runs of ids (:func:`item_groups`,
        ``"contiguous"``); pass ``item_groups(counts, G, "popularity")`` for RULE's popularity groups (with
        ``num_groups``, or it is taken as ``groups.max() + 1``). An architecture search then trades blocks
        between groups with :meth:`architecture_bytes` and :meth:`set_architecture`.
        """
        blocks = default_num_blocks(dim) if num_blocks is None else int(num_blocks)
        if blocks < 1 or dim % blocks:
            raise ValueError(f"dim ({dim}) must be a multiple of num_blocks ({blocks})")
        if groups is None:
            count = min(DEFAULT_NUM_GROUPS if num_groups is None else int(num_groups), int(num_items))
            groups = item_groups(np.zeros(num_items + 1, dtype=np.int64), count, "contiguous")
        else:
            groups = groups.detach().cpu().numpy() if isinstance(groups, Tensor) else np.asarray(groups)
            count = int(groups[1:].max()) + 1 if num_groups is None else int(num_groups)
        sizes = np.bincount(np.asarray(groups[1:], dtype=np.int64), minlength=count)
        width = dim // blocks
        smallest = 0
        for k in range(blocks, 0, -1):
            mask = leading_blocks(count, blocks, k)
            smallest = cls.bytes_for(sizes, mask, width, dtype)
            if smallest <= budget_bytes:
                table = cls(num_items, dim, blocks, groups, count, scoring=scoring, dtype=dtype, **kwargs)
                table.set_architecture(mask)
                return table
        raise ValueError(f"budget {budget_bytes:,} B is below the smallest elastic table ({smallest:,} B with 1 "
                         f"of {blocks} blocks per group, {count} groups, {num_items:,} items, dim={dim}, {dtype})")

    def extra_repr(self) -> str:
        kept = int(self.mask.sum())
        return (f"num_items={self.num_items}, dim={self.dim}, num_blocks={self.num_blocks}, "
                f"num_groups={self.num_groups}, kept={kept}/{self.num_groups * self.num_blocks}, "
                f"scoring={self.scoring}, dtype={self.stored_dtype}, nbytes={self.nbytes():,}")
