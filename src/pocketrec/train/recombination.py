"""Hot/cold embedding recombination (OD-Rec, reused by EODRec; docs/methods/odrec.md).

Items are *hot* when they are among the most frequent ``hot_ratio`` of the distinct items seen in the
training inputs (counted over the prefix-expanded samples, :meth:`Dataset.item_counts`), *cold*
otherwise. Every prefix used for the self-supervised terms is split into its hot and its cold
sub-sequence (order kept) and falls in one of three kinds:

* ``MIXED``: it has hot and cold items; its views recombine the two models' sub-session readouts;
* ``HOT_ONLY`` / ``COLD_ONLY``: its views are the two models' full-session vectors, swapped;
* ``EXCLUDED``: prefixes of length 1, left out of both self-supervised terms as in the authors' code.

Everything is mask based and vectorised: a prefix is a row of ``inputs`` with the positions after its
end masked out, so no sub-sequence is ever gathered or re-padded.

Which prefixes: a batch row of the causal encoder holds every prefix of a session (one per target
position). Running the SSL terms on all of them costs ``(#targets) x L`` readouts per model; by default
(``positions="last"``) only the longest prefix of each row -- the whole session window, i.e. the sample
the authors' code sees when the session is its last prefix -- is used, which bounds the cost at one
prefix per row. ``positions="all"`` uses every target position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pocketrec.models.session_encoder import AttentionReadout

EXCLUDED, MIXED, HOT_ONLY, COLD_ONLY = 0, 1, 2, 3
POSITIONS = ("last", "all")


def hot_item_mask(counts: np.ndarray | Tensor, hot_ratio: float = 0.2) -> Tensor:
    """Bool ``(num_items + 1,)``: True for the hot items.

    ``counts[i]`` is how often item ``i`` occurs in the training inputs (index 0, padding, is ignored).
    Hot = the ``floor(hot_ratio * D)`` most frequent of the ``D`` distinct items with a positive count
    (at least one when ``hot_ratio > 0`` and ``D > 0``); ties are broken by the smaller id, so the
    mask is deterministic. Items never seen in the training inputs are cold.
    """
    if not 0.0 <= hot_ratio <= 1.0:
        raise ValueError(f"hot_ratio must lie in [0, 1], got {hot_ratio}")
    c = np.array(counts.cpu() if isinstance(counts, Tensor) else counts, dtype=np.int64)
    if c.ndim != 1 or len(c) < 1:
        raise ValueError("counts must be a 1-d array indexed by item id (index 0 = padding)")
    c[0] = 0
    distinct = int((c > 0).sum())
    n_hot = int(np.floor(hot_ratio * distinct + 1e-9))
    if hot_ratio > 0 and distinct > 0:
        n_hot = max(n_hot, 1)
    mask = torch.zeros(len(c), dtype=torch.bool)
    if n_hot:
        order = np.lexsort((np.arange(len(c)), -c))[:n_hot]  # by count descending, then by id
        mask[torch.from_numpy(order)] = True
    return mask


def select_positions(target_mask: Tensor, positions: str = "last") -> tuple[Tensor, Tensor]:
    """``(rows, cols)`` of the target positions used by the SSL terms (see the module docstring)."""
    if positions == "all":
        rows, cols = target_mask.nonzero(as_tuple=True)
        return rows, cols
    if positions != "last":
        raise ValueError(f"positions must be one of {POSITIONS}, got {positions!r}")
    has = target_mask.any(1)
    length = target_mask.shape[1]
    idx = torch.arange(length, device=target_mask.device).expand_as(target_mask)
    last = torch.where(target_mask, idx, torch.full_like(idx, -1)).max(1).values
    rows = has.nonzero(as_tuple=True)[0]
    return rows, last[rows]


@dataclass
class PrefixSplit:
    """The hot/cold split of ``N`` prefixes.

    ``items (N, L)`` are the prefix items (0 after the prefix end), ``hot``/``cold`` ``(N, L)`` bool masks
    of the hot and cold sub-sequences, ``kind (N,)`` one of ``EXCLUDED, MIXED, HOT_ONLY, COLD_ONLY``.
    """

    items: Tensor
    hot: Tensor
    cold: Tensor
    kind: Tensor

    @property
    def used(self) -> Tensor:
        return self.kind != EXCLUDED


def split_prefixes(inputs: Tensor, rows: Tensor, cols: Tensor, hot_mask: Tensor) -> PrefixSplit:
    """Split prefix ``inputs[rows[n], :cols[n] + 1]`` for each ``n`` into hot and cold sub-sequences."""
    if len(rows) == 0:
        empty = inputs.new_zeros((0, 1))
        return PrefixSplit(empty, empty.bool(), empty.bool(), inputs.new_zeros((0,)))
    width = int(cols.max()) + 1
    seqs = inputs[rows, :width]
    inside = torch.arange(width, device=inputs.device).unsqueeze(0) <= cols.unsqueeze(1)
    real = inside & (seqs != 0)
    items = torch.where(real, seqs, torch.zeros_like(seqs))
    is_hot = hot_mask.to(inputs.device)[items]
    hot = real & is_hot
    cold = real & ~is_hot
    n_hot, n_cold = hot.sum(1), cold.sum(1)
    kind = torch.full_like(cols, EXCLUDED)
    kind = torch.where((n_hot > 0) & (n_cold > 0), torch.full_like(kind, MIXED), kind)
    kind = torch.where((n_hot > 0) & (n_cold == 0), torch.full_like(kind, HOT_ONLY), kind)
    kind = torch.where((n_hot == 0) & (n_cold > 0), torch.full_like(kind, COLD_ONLY), kind)
    kind = torch.where(real.sum(1) < 2, torch.full_like(kind, EXCLUDED), kind)
    return PrefixSplit(items, hot, cold, kind)


class RecombinationHeads(nn.Module):
    """Training-only modules of the recombination terms (never shipped with the student).

    * ``student_hot``, ``student_cold``: sub-session readouts over the *student's* item embeddings;
    * ``teacher_hot``, ``teacher_cold``: the teacher's sub-session readouts over the *teacher's* item
      embeddings. The authors never train these; here they are ordinary
      trainable parameters updated by the CL/pred losses together with the student, while the
      teacher's encoder and table stay frozen;
    * ``w_a``, ``w_b`` (contrastive views) and ``w_c``, ``w_d`` (predictive views): bias-free 2d -> d.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.student_hot = AttentionReadout(dim)
        self.student_cold = AttentionReadout(dim)
        self.teacher_hot = AttentionReadout(dim)
        self.teacher_cold = AttentionReadout(dim)
        self.w_a = nn.Linear(2 * dim, dim, bias=False)
        self.w_b = nn.Linear(2 * dim, dim, bias=False)
        self.w_c = nn.Linear(2 * dim, dim, bias=False)
        self.w_d = nn.Linear(2 * dim, dim, bias=False)

    def readouts(self, split: PrefixSplit, student_emb: Tensor, teacher_emb: Tensor
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(r_S_hot, r_S_cold, r_T_hot, r_T_cold)``, each ``(N, d)``; empty parts give zeros."""
        return (self.student_hot.pool(student_emb, split.hot), self.student_cold.pool(student_emb, split.cold),
                self.teacher_hot.pool(teacher_emb, split.hot), self.teacher_cold.pool(teacher_emb, split.cold))

    @staticmethod
    def _views(left: nn.Linear, right: nn.Linear, parts: tuple[Tensor, Tensor, Tensor, Tensor],
               split: PrefixSplit, z_student: Tensor, z_teacher: Tensor) -> tuple[Tensor, Tensor]:
        s_hot, s_cold, t_hot, t_cold = parts
        mixed = (split.kind == MIXED).unsqueeze(1)
        v_s = torch.where(mixed, left(torch.cat([s_hot, t_cold], 1)), z_teacher)
        v_t = torch.where(mixed, right(torch.cat([t_hot, s_cold], 1)), z_student)
        used = split.used
        return v_s[used], v_t[used]

    def contrastive_views(self, parts, split, z_student, z_teacher) -> tuple[Tensor, Tensor]:
        """``(v_S, v_T)`` for the used prefixes: ``W_a[r_S_hot; r_T_cold]``, ``W_b[r_T_hot; r_S_cold]``
        for mixed ones, the swapped full-session vectors ``(z_T, z_S)`` for hot-only and cold-only ones."""
        return self._views(self.w_a, self.w_b, parts, split, z_student, z_teacher)

    def predictive_views(self, parts, split, z_student, z_teacher) -> tuple[Tensor, Tensor]:
        """As :meth:`contrastive_views` with ``W_c``, ``W_d``; the first is scored against the student's
        table, the second against the teacher's."""
        return self._views(self.w_c, self.w_d, parts, split, z_student, z_teacher)
