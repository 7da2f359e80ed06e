"""Code refresh: codebook-table codes that keep moving while the student trains.

EODRec fixes every item's codes in phase 1, to fit the teacher's vector, and then trains only the
codebooks (and the encoder) against the recommendation and distillation losses. An item whose quantised
vector the loss would rather have elsewhere can then only be helped by codewords it shares with
thousands of other items. With a refresher, every ``every`` optimiser steps the table takes a proximal
step on its codes (:meth:`~pocketrec.tables.codebook.CodebookTable.refresh_codes`): each item's codes are
re-assigned toward its current vector moved against the loss gradient its row received since the last
refresh, so codes change where the loss pushes and stay where it does not. The step length is set per
refresh so that the mean move is ``trust`` times the table's mean row norm (gradient sums differ in scale
from epoch to epoch and between datasets; a fraction of the rows' own length does not).

The bytes and the stored format do not change: a refreshed table is the same table with other codes.

Off by default, because it has not been shown to help. Measured with ``benchmarks/code_refresh_probe.py``
on the trained Diginetica student at 40x (d = 256, 86 codebooks of 4): one refresh from gradients summed
over 120 batches, at trust 0.03, changed the codes of 0.1% of the items and left the loss on 20 held-out
batches unchanged (0.98529 -> 0.98547); at trust 0.1 it changed 9% of the items and raised that loss to
1.057. On the accumulated batches themselves it does lower the loss (20 batches, trust 0.03: 1.8% of the
items changed, 0.99955 -> 0.96768; ``--held 0``): the step is right to first order, but the per-item
gradients of a converged student mostly fit the batches they came from. A full training run with
refreshes has not been made.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pocketrec.tables.codebook import CodebookTable
from pocketrec.train import distributed


@dataclass
class CodeRefreshConfig:
    """``every``: optimiser steps between refreshes (0: off, the codes stay as phase 1 fitted them).
    ``trust``: mean step length as a fraction of the mean row norm."""

    every: int = 0
    trust: float = 0.1

    def __post_init__(self) -> None:
        if self.every < 0:
            raise ValueError(f"code refresh every must be >= 0 (0 = off), got {self.every}")
        if self.trust <= 0:
            raise ValueError(f"code refresh trust must be > 0, got {self.trust}")


@dataclass
class CodeRefresher:
    """The trainer's per-step hook (``on_step(step)``) that refreshes ``table``'s codes every
    ``config.every`` steps; ``history`` keeps each refresh's statistics."""

    table: CodebookTable
    config: CodeRefreshConfig
    log: Callable[[str], None] | None = None
    history: list[dict[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.table, CodebookTable):
            raise TypeError(f"code refresh needs a CodebookTable, got {type(self.table).__name__}")
        self.table.track_row_gradients(True)

    def __call__(self, step: int) -> None:
        if step % self.config.every:
            return
        grads = self.table.row_gradients
        assert grads is not None
        # Under torch.distributed each rank summed its slice's gradients: their mean over the ranks is the
        # global batch's (DDP's convention), so every rank refreshes to the same codes.
        distributed.all_reduce_mean_(grads)
        with torch.no_grad():
            row_norm = float(self.table.row_norms()[1:].mean())
            grad_norm = float(grads[1:].norm(dim=1).mean())
        if grad_norm == 0.0:
            return
        stats = {"step": float(step), **self.table.refresh_codes(self.config.trust * row_norm / grad_norm)}
        self.history.append(stats)
        if self.log is not None and distributed.is_main():
            self.log(f"step {step}: codes refreshed, {100 * stats['codes_changed']:.2f}% of codes "
                     f"({100 * stats['items_changed']:.1f}% of items) changed")

    def close(self) -> None:
        """Stop tracking gradients (the table is then exactly as exported)."""
        self.table.track_row_gradients(False)
