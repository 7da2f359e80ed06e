"""The ``user-vectors`` backbone: the device form of any collaborative-filtering model.

A CF device never runs the model that made its vectors (LightGCN's graph, say): it holds its user's vector
and an item table, and a score is their dot product. :class:`UserVectorModel` is exactly that, as a
trainable :class:`~pocketrec.backbones.base.Recommender`: a user table ``(num_users + 1, dim)`` and any
:class:`~pocketrec.tables.base.ItemTable` of width ``dim``. So an item table of any kind (TT, codebooks,
quantised rows) can replace the dense table of a CF model's final item vectors, and be fine-tuned against
that model (:mod:`pocketrec.methods.cf_compress`).

* :meth:`LightGCN.to_user_vectors <pocketrec.backbones.lightgcn.LightGCN.to_user_vectors>` turns a trained
  LightGCN into one (propagated user vectors + a dense table of the propagated item vectors), scoring
  exactly as the LightGCN does;
* trained from scratch (``pocketrec train --backbone user-vectors``) it is BPR matrix factorisation
  (:meth:`UserVectorModel.build_teacher` makes its users trainable);
* ``config.train_users`` says whether training moves the user vectors (default: frozen, the vectors the
  teacher gave the users' devices); ``config.l2`` weighs ``0.5 * (|u|^2 + |i|^2 + |j|^2) / B`` on a BPR
  batch's user and item vectors (default 0).

Training: BPR (:class:`~pocketrec.backbones.bpr.BPRBatches`); evaluation: CF full ranking
(:func:`~pocketrec.eval.cf_metrics.evaluate_cf`, the user's earlier items excluded), selection on NDCG@20.
The device artifact: the item table, and :func:`user_device_tensors` of the served users (the one writer
of that format, LightGCN's included).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from pocketrec.backbones.base import Recommender
from pocketrec.backbones.bpr import BPRBatches, bpr_term
from pocketrec.device.np_users import SEEN_INDPTR, SEEN_ITEMS, VECTORS
from pocketrec.tables.base import ItemTable
from pocketrec.tables.dense import DenseTable
from pocketrec.train.distributed import is_distributed, shard_weights

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

LossFn = Callable[[Tensor], tuple[Tensor, dict[str, float]]]


@dataclass
class UserVectorConfig:
    """The user-vectors model's settings: ``dim`` (user vectors and item rows), ``train_users`` (whether
    training moves the user vectors), ``l2`` (BPR batches' L2 weight), ``init_std`` (random user vectors,
    and the default dense table's rows, are drawn from ``N(0, init_std^2)``)."""

    dim: int = 64
    train_users: bool = False
    l2: float = 0.0
    init_std: float = 0.1

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ValueError(f"l2 must be a finite number >= 0, got {self.l2}")
        if not (self.init_std > 0 and math.isfinite(self.init_std)):
            raise ValueError(f"init_std must be > 0, got {self.init_std}")


def user_device_tensors(vectors: Tensor, seen: csr_matrix, users: Sequence[int] | None,
                        num_users: int) -> dict[str, np.ndarray]:
    """The query side of a collaborative-filtering artifact (:mod:`pocketrec.device.np_users`): the vectors
    ``(U, D)`` float32 of ``users`` (internal ids, rows of ``vectors``) and, as CSR, the items each already
    has (their rows of ``seen``, the training + validation interactions). No users (``[]``): ``U = 0``."""
    if users is None:
        raise ValueError("a collaborative-filtering artifact is for the device of given users: name them (an "
                         "empty list: the item table alone)")
    ids = np.asarray(users, dtype=np.int64)
    if len(ids) and (ids.min() < 1 or ids.max() > num_users):
        raise ValueError(f"user ids must lie in 1..{num_users}")
    rows = vectors.detach()[torch.from_numpy(ids).to(vectors.device)]
    chosen = seen[ids]
    return {VECTORS: np.ascontiguousarray(rows.cpu().numpy().astype(np.float32)),
            SEEN_INDPTR: chosen.indptr.astype(np.int64),
            SEEN_ITEMS: chosen.indices.astype(np.int32)}


class InteractionRecommender(Recommender):
    """What every collaborative-filtering backbone shares (LightGCN, :class:`UserVectorModel`): interaction
    data (:func:`~pocketrec.data.registry.load_interactions`) attached to the model, BPR batches, CF full
    ranking with each user's earlier items excluded (selection on NDCG@20), ``num_users`` in checkpoints,
    and the device artifact of :func:`user_device_tensors`.

    A subclass sets ``num_users`` and gives :meth:`device_user_vectors` (the vectors a user's device
    queries with); one that needs more of its data than the users' items (LightGCN's graph) extends
    :meth:`_take`.
    """

    device_query: ClassVar[str] = "user-vectors"
    selection_metric: ClassVar[str] = "ndcg@20"
    #: BPR's reference batch; it converges over hundreds of epochs, so stop on patience instead
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 2048, "epochs": 400, "patience": 10,
                                                "eval_batch_size": 1024}
    num_users: int
    _seen: csr_matrix | None = None  # what a user's device excludes (set by attach)
    _attached: Any = None  # the dataset attach() took it from

    @classmethod
    def load_dataset(cls, name_or_path: str) -> Any:
        """Interaction data (:func:`pocketrec.data.registry.load_interactions`)."""
        from pocketrec.data import registry

        return registry.load_interactions(name_or_path)

    def checkpoint_meta(self) -> dict[str, Any]:
        return {"num_users": self.num_users}

    def attach(self, dataset: Any) -> None:
        """Take what the model needs of ``dataset`` (its users' training + validation items, which each
        user's device excludes); ``ValueError`` for a dataset of other users or items."""
        shape = (self.num_users + 1, self.num_items + 1)
        if tuple(dataset.train.shape) != shape:
            raise ValueError(f"dataset {dataset.name!r} has {dataset.num_users} users and {dataset.num_items} "
                             f"items; this model was built for {self.num_users} and {self.num_items}")
        if self._attached is not dataset:
            self._take(dataset)
            self._attached = dataset

    def _take(self, dataset: Any) -> None:
        self._seen = dataset.seen("test")

    def training_batches(self, dataset: Any, batch_size: int) -> BPRBatches:
        self.attach(dataset)
        return BPRBatches(dataset.train, batch_size)

    def evaluate(self, dataset: Any, split: str, batch_size: int = 256, progress: bool = False,
                 desc: str = "eval") -> dict[str, float]:
        """Recall/NDCG/Precision@10/20/50 of ``split``, ranking every item but the user's earlier ones."""
        from pocketrec.eval.cf_metrics import evaluate_model

        return evaluate_model(self, dataset, split, batch_size, progress, desc)

    def device_user_vectors(self) -> Tensor:
        """The user vectors ``(num_users + 1, dim)`` a device queries with."""
        raise NotImplementedError

    def device_tensors(self, users: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """:func:`user_device_tensors` of ``users`` (internal ids): their vectors and their items."""
        if self._seen is None:
            raise ValueError("attach(dataset) first: the users' items come from the training data")
        return user_device_tensors(self.device_user_vectors(), self._seen, users, self.num_users)


class UserVectorModel(InteractionRecommender):
    """A user table and an item table; ``score(u, i) = <user_u, row_i>`` (see the module docstring).

    ``user_vectors`` ``(num_users + 1, dim)`` (row 0, padding, is zeroed) are copied in; without them the
    users are drawn from ``N(0, init_std^2)``. Whether they train is ``config.train_users``.
    """

    backbone: ClassVar[str] = "user-vectors"
    config_class: ClassVar[type] = UserVectorConfig

    def __init__(self, num_users: int, table: ItemTable, config: UserVectorConfig | None = None,
                 user_vectors: Tensor | None = None) -> None:
        super().__init__()
        if not isinstance(table, ItemTable):
            raise TypeError(f"table must be an ItemTable, got {type(table).__name__}")
        config = config or UserVectorConfig(dim=table.dim)
        if num_users < 1:
            raise ValueError(f"num_users must be >= 1, got {num_users}")
        if table.dim != config.dim:
            raise ValueError(f"the item table is {table.dim} wide; the user vectors are config.dim={config.dim}")
        self.config = config
        self.num_users = int(num_users)
        self.table = table
        self.user_embedding = nn.Embedding(self.num_users + 1, config.dim)
        with torch.no_grad():
            if user_vectors is None:
                self.user_embedding.weight.normal_(0.0, config.init_std)
            else:
                if tuple(user_vectors.shape) != (self.num_users + 1, config.dim):
                    raise ValueError(f"user_vectors has shape {tuple(user_vectors.shape)}, expected "
                                     f"{(self.num_users + 1, config.dim)} (num_users + 1, dim)")
                self.user_embedding.weight.copy_(user_vectors.detach().float().cpu())
            self.user_embedding.weight[0].zero_()
        self.user_embedding.weight.requires_grad_(config.train_users)

    @property
    def user_vectors(self) -> Tensor:
        """The user table ``(num_users + 1, dim)`` (row 0 zero)."""
        return self.user_embedding.weight

    def score_users(self, users: Tensor) -> Tensor:
        """Scores ``(B, num_items + 1)`` of the users ``users (B,)`` against every item; column 0 masked."""
        weight = self.user_embedding.weight
        return self.table.score(weight[users.to(weight.device)])

    def to_user_vectors(self, dtype: str = "float32") -> UserVectorModel:
        """A copy with a dense item table of this model's rows (stored at ``dtype``), users frozen: a teacher
        for :mod:`pocketrec.methods.cf_compress`, as :meth:`LightGCN.to_user_vectors` gives."""
        with torch.no_grad():
            rows = self.table.all_rows().detach().float()
        table = DenseTable(self.num_items, self.config.dim, dtype=dtype)
        with torch.no_grad():
            table.weight.copy_(rows.cpu())
        model = UserVectorModel(self.num_users, table, dataclasses.replace(self.config, train_users=False),
                                user_vectors=self.user_vectors)
        if self._attached is not None:
            model.attach(self._attached)
        return model.to(rows.device).eval()

    # ------------------------------------------------------------------ the backbone interface
    @classmethod
    def build_teacher(cls, dataset: Any, config: UserVectorConfig) -> UserVectorModel:
        """BPR matrix factorisation: random users and a random dense table; the users train whatever
        ``config.train_users`` says (a model from scratch needs them)."""
        config = dataclasses.replace(config, train_users=True)
        model = cls(dataset.num_users, DenseTable(dataset.num_items, config.dim, init_std=config.init_std), config)
        model.attach(dataset)
        return model

    @classmethod
    def from_checkpoint(cls, config: Any, table: ItemTable, meta: dict[str, Any]) -> UserVectorModel:
        """The model without its data: :meth:`attach` a dataset before exporting it for users."""
        return cls(int(meta["num_users"]), table, config)

    def training_loss(self) -> LossFn:
        """BPR on the batch's user vectors and item rows, plus ``config.l2`` on them (``parts``: ``bpr``,
        ``l2``, the L2 part weighted)."""
        l2_weight = self.config.l2

        def loss_fn(batch: Tensor) -> tuple[Tensor, dict[str, float]]:
            weight = self.user_embedding.weight
            batch = batch.to(weight.device)
            users, positives, negatives = weight[batch[:, 0]], self.table(batch[:, 1]), self.table(batch[:, 2])
            bpr = bpr_term(users, positives, negatives)
            weight = shard_weights(len(batch))[0] if is_distributed() else None  # torch.distributed: see fit
            if weight is not None:
                bpr = bpr * weight
            if not l2_weight:
                return bpr, {"bpr": float(bpr.detach()), "l2": 0.0}
            l2 = l2_weight * 0.5 * (users.pow(2).sum() + positives.pow(2).sum() + negatives.pow(2).sum()) / len(batch)
            if weight is not None:
                l2 = l2 * weight
            return bpr + l2, {"bpr": float(bpr.detach()), "l2": float(l2.detach())}

        return loss_fn

    def device_user_vectors(self) -> Tensor:
        return self.user_embedding.weight

    def extra_repr(self) -> str:
        return f"num_users={self.num_users}, num_items={self.num_items}, dim={self.config.dim}, " \
               f"train_users={self.config.train_users}"
