"""The backbone interface: one protocol for the trainer, evaluation, checkpoints and the device artifact.

A :class:`Recommender` is a backbone (session encoder, LightGCN, ...) plus an item table. What the rest of
pocketrec asks of it, and nothing else:

* ``backbone`` (the registry name), ``config`` (a dataclass, ``config_class``), ``table``, ``num_items``;
* ``load_dataset(name_or_path)`` and ``build_teacher(dataset, config)`` (class methods): its data family's
  loader and a dense-table model for a dataset;
* ``selection_metric``: the validation metric that picks the epoch when the training config names none;
* ``training_batches(dataset, batch_size)``: a :class:`~pocketrec.data.batching.BatchSource` of its
  training batches, and ``training_loss()``: the loss of a batch over the item table's scores;
* ``evaluate(dataset, split, ...)``: full-ranking metrics on a split of its data family;
* ``checkpoint_meta()`` / ``from_checkpoint(config, table, meta)``: what a checkpoint needs beyond the
  state dict and the table to rebuild it (e.g. the number of users);
* ``device_query``: the kind of query encoder a device runs (``"session-encoder"``, ``"user-vectors"``),
  ``device_table()``: the item table a device ranks with, and ``device_tensors(users)``: the arrays outside
  the item table that the device artifact stores for it.

Backbones are registered by name in :data:`BACKBONES` as ``"module:Class"`` strings and imported on first
use, so loading a checkpoint imports only the backbone it needs. A new backbone is its own module plus
one line here.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from torch import Tensor, nn

from pocketrec.tables.base import ItemTable

#: backbone name -> ``"module:Class"`` of its :class:`Recommender`.
BACKBONES: dict[str, str] = {
    "session": "pocketrec.models.session_encoder:SessionRecommender",
    "lightgcn": "pocketrec.backbones.lightgcn:LightGCN",
    "user-vectors": "pocketrec.backbones.user_vectors:UserVectorModel",
}
#: The backbone of checkpoints and artifacts written before backbones had names.
DEFAULT_BACKBONE = "session"

LossFn = Callable[[Any], tuple[Tensor, dict[str, float]]]


def backbone_class(name: str) -> type[Recommender]:
    """The :class:`Recommender` class registered as ``name``; ``ValueError`` naming the known ones."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(sorted(BACKBONES))})")
    module, _, cls = BACKBONES[name].partition(":")
    return getattr(importlib.import_module(module), cls)


class Recommender(nn.Module, ABC):
    """A backbone with its item table (see the module docstring for the contract)."""

    backbone: ClassVar[str] = ""
    device_query: ClassVar[str] = ""
    selection_metric: ClassVar[str] = ""
    #: the dataclass of ``config``
    config_class: ClassVar[type]
    #: ``TrainConfig`` values this backbone trains with unless told otherwise (e.g. LightGCN's batch 2048)
    train_defaults: ClassVar[dict[str, Any]] = {}
    config: Any
    table: ItemTable

    @property
    def num_items(self) -> int:
        return self.table.num_items

    @classmethod
    @abstractmethod
    def load_dataset(cls, name_or_path: str) -> Any:
        """The dataset of this backbone's data family (sequences, interactions) by name or path."""

    @classmethod
    @abstractmethod
    def build_teacher(cls, dataset: Any, config: Any) -> Recommender:
        """A model of ``config`` with a dense item table, sized for ``dataset`` (seed torch first)."""

    @classmethod
    def from_checkpoint(cls, config: Any, table: ItemTable, meta: dict[str, Any]) -> Recommender:
        """Rebuild the model saved with ``meta`` (its state dict is loaded by the caller)."""
        return cls(config, table)

    def checkpoint_meta(self) -> dict[str, Any]:
        """Keys a checkpoint stores for :meth:`from_checkpoint` beyond the config and the table."""
        return {}

    @abstractmethod
    def training_batches(self, dataset: Any, batch_size: int) -> Any:
        """The :class:`~pocketrec.data.batching.BatchSource` of training batches of ``dataset``."""

    @abstractmethod
    def training_loss(self) -> LossFn:
        """``loss_fn(batch) -> (loss, parts)``: the backbone's own training loss (a teacher's)."""

    @abstractmethod
    def evaluate(self, dataset: Any, split: str, batch_size: int = 256, progress: bool = False,
                 desc: str = "eval") -> dict[str, float]:
        """Full-ranking metrics of ``split`` (``"valid"`` or ``"test"``) of ``dataset``."""

    def device_table(self) -> ItemTable:
        """The item table a device stores and ranks with (the model's own, unless the backbone transforms
        it, as LightGCN's propagation does)."""
        return self.table

    @abstractmethod
    def device_tensors(self, users: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """The arrays outside the item table that a device needs, named as the artifact stores them;
        ``users`` (internal ids) for a backbone whose device query is its user's vector."""
