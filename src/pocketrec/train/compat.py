"""Checks that a checkpoint and a dataset (or teacher and student) belong together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pocketrec.data.dataset import Dataset
from pocketrec.train.checkpoint import CheckpointError


def check_compatible(meta: dict[str, Any], dataset: Dataset, what: str = "checkpoint") -> None:
    """Refuse a checkpoint trained on another dataset (another item vocabulary)."""
    if meta.get("num_items") != dataset.num_items or meta.get("vocab_fingerprint") != dataset.vocab.fingerprint():
        raise CheckpointError(
            f"{what} was trained on {meta.get('dataset')!r} ({meta.get('num_items')} items) and does not fit "
            f"dataset {dataset.name!r} ({dataset.num_items} items): the item vocabularies differ")


def dataset_of(meta: dict[str, Any], given: str | None, what: str = "checkpoint") -> str:
    """What to load for a checkpoint: ``given`` (``--dataset``), else the data it was trained on.

    A model trained from a file or folder records its absolute path (``dataset_origin``); when that path is
    gone the error says to pass ``--dataset``.
    """
    if given:
        return given
    origin = meta.get("dataset_origin")
    if origin:
        if not Path(origin).exists():
            raise CheckpointError(f"{what} was trained on {origin}, which is no longer there; pass --dataset")
        return str(origin)
    name = meta.get("dataset")
    if not name:
        raise CheckpointError(f"{what} does not name its dataset; pass --dataset")
    return str(name)


def load_dataset_of(meta: dict[str, Any], given: str | None, what: str = "checkpoint") -> Any:
    """Load :func:`dataset_of` with the loader of the checkpoint's backbone. A checkpoint of an older
    pocketrec trained on a file (its name only, no path recorded) gets an error that says to pass
    ``--dataset``."""
    from pocketrec.data import registry
    from pocketrec.data.errors import DataError
    from pocketrec.train.checkpoint import checkpoint_backbone

    name = dataset_of(meta, given, what)
    try:
        return checkpoint_backbone(what, meta).load_dataset(name)
    except DataError:
        if given or meta.get("dataset_origin") or name.lower() in registry.dataset_names():
            raise
        raise CheckpointError(f"{what} was trained on {name!r}, which is not a registered dataset (a file or "
                              "folder whose path it does not record); pass --dataset PATH") from None
