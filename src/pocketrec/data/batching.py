"""Batches of whole sequences for the causal encoder.

A batch is ``inputs (B, L)`` and ``targets (B, L)``, both right-padded with 0: position ``t`` of a row
predicts ``targets[:, t]`` from ``inputs[:, :t+1]``; ``targets == 0`` marks positions that are not
examples. Sequences longer than ``max_len + 1`` are cut into windows so each window's last target sees
exactly ``max_len`` items of context (earlier targets of a window see fewer, as in SASRec training).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from pocketrec.data.dataset import SequenceSplit


@dataclass
class Batch:
    inputs: Tensor
    targets: Tensor

    @property
    def target_mask(self) -> Tensor:
        return self.targets != 0

    @property
    def num_targets(self) -> int:
        return int(self.target_mask.sum())


def windows(split: SequenceSplit, max_len: int) -> list[tuple[np.ndarray, int]]:
    """Cut each sequence into ``(tokens, first_target)`` windows of at most ``max_len + 1`` tokens."""
    out: list[tuple[np.ndarray, int]] = []
    for seq, first in zip(split.sequences, split.first_target, strict=True):
        first = max(int(first), 1)
        end = len(seq)
        while end - 1 >= first:
            start = max(0, end - 1 - max_len)
            out.append((seq[start:end], max(first, start + 1) - start))
            end = start + 1
    return out


def collate(chunk: list[tuple[np.ndarray, int]]) -> Batch:
    width = max(len(tokens) for tokens, _ in chunk) - 1
    inputs = np.zeros((len(chunk), width), dtype=np.int64)
    targets = np.zeros((len(chunk), width), dtype=np.int64)
    for row, (tokens, first) in enumerate(chunk):
        n = len(tokens) - 1
        inputs[row, :n] = tokens[:-1]
        targets[row, first - 1:n] = tokens[first:]
    return Batch(torch.from_numpy(inputs), torch.from_numpy(targets))


def iterate_batches(split: SequenceSplit, batch_size: int, max_len: int, shuffle: bool = False,
                    seed: int = 0, bucket: int = 64) -> Iterator[Batch]:
    """Yield batches of ``batch_size`` windows.

    With ``shuffle``, windows are shuffled with ``seed`` and then sorted by length inside buckets of
    ``bucket`` batches, which keeps batches random but cuts padding (sessions vary from 2 to 40 items).
    Without it, the order is the split's order, which makes evaluation reproducible.
    """
    items = windows(split, max_len)
    order = np.arange(len(items))
    if shuffle:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(items))
        span = batch_size * bucket
        lengths = np.array([len(items[i][0]) for i in order])
        for start in range(0, len(order), span):
            block = order[start:start + span]
            order[start:start + span] = block[np.argsort(lengths[start:start + span], kind="stable")]
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for j in rng.permutation(len(chunks)):
            yield collate([items[i] for i in chunks[j]])
    else:
        for i in range(0, len(order), batch_size):
            yield collate([items[k] for k in order[i:i + batch_size]])


def num_batches(split: SequenceSplit, batch_size: int, max_len: int) -> int:
    return -(-len(windows(split, max_len)) // batch_size)


class BatchSource(Protocol):
    """What the trainer draws an epoch of batches from, whatever the backbone's batches are."""

    def num_batches(self) -> int:
        """Batches per epoch (for the progress bar and the step count)."""

    def batches(self, seed: int) -> Iterable[Any]:
        """One epoch of training batches in the order ``seed`` gives (the same seed, the same order)."""


@dataclass
class SessionBatches:
    """The training batches of a :class:`SequenceSplit`: shuffled whole-sequence windows (:func:`iterate_batches`)."""

    split: SequenceSplit
    batch_size: int
    max_len: int

    def num_batches(self) -> int:
        return num_batches(self.split, self.batch_size, self.max_len)

    def batches(self, seed: int) -> Iterator[Batch]:
        return iterate_batches(self.split, self.batch_size, self.max_len, shuffle=True, seed=seed)
