"""Checks that a checkpoint and a dataset (or teacher and student) belong together."""

from __future__ import annotations

from typing import Any

from pocketrec.data.dataset import Dataset
from pocketrec.train.checkpoint import CheckpointError


def check_compatible(meta: dict[str, Any], dataset: Dataset, what: str = "checkpoint") -> None:
    """Refuse a checkpoint trained on another dataset (another item vocabulary)."""
    if meta.get("num_items") != dataset.num_items or meta.get("vocab_fingerprint") != dataset.vocab.fingerprint():
        raise CheckpointError(
            f"{what} was trained on {meta.get('dataset')!r} ({meta.get('num_items')} items) and does not fit "
            f"dataset {dataset.name!r} ({dataset.num_items} items): the item vocabularies differ")
