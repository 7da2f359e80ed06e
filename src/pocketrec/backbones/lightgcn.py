"""LightGCN (He et al., SIGIR 2020): the collaborative-filtering backbone and its BPR loss.

Users and items are the nodes of one bipartite graph (node ``u`` is user ``u``, node ``num_users + 1 + i``
is item ``i``; the padding user 0 and item 0 are isolated nodes). With ``A`` its adjacency and ``D`` its
degrees, ``Â = D^-1/2 A D^-1/2`` and the layers are ``e^(l+1) = Â e^(l)``: no weights, no non-linearity.
The final vectors combine the ego layer ``e^(0)`` and the ``layers`` propagated ones:

* ``combine="mean"``: their mean (LightGCN), dimension ``dim``;
* ``combine="concat"``: their concatenation (RULE's NGCF-reduced code), dimension ``dim * (layers + 1)``.

The score of a user and an item is the dot product of their final vectors. A device never runs the
graph: it stores the propagated item vectors (:meth:`LightGCN.propagated_item_table`) and its user's
propagated vector (:meth:`LightGCN.propagated_user_vectors`); :meth:`LightGCN.to_user_vectors` is that
device form as a model of its own (the ``user-vectors`` backbone), which a compressed item table can replace.

Training is BPR with one uniform negative per training interaction (:class:`~pocketrec.backbones.bpr.
BPRBatches`, shared with the other CF backbones; :func:`bpr_loss`), the whole graph propagated once per
batch, and LightGCN's L2 term on the batch's ego embeddings. Reference settings (the LightGCN
paper's, docs/methods/teachers.md): dim 64, 3 layers, mean, Adam lr 1e-3, L2 1e-4, batch 2048.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from pocketrec.backbones.bpr import binary_interactions, bpr_term
from pocketrec.backbones.user_vectors import InteractionRecommender, UserVectorConfig, UserVectorModel
from pocketrec.tables.base import ItemTable, mask_padding_column
from pocketrec.tables.dense import DenseTable
from pocketrec.train.distributed import is_distributed, shard_weights

if TYPE_CHECKING:
    from scipy.sparse import csr_matrix

COMBINES = ("mean", "concat")
LossFn = Callable[[Tensor], tuple[Tensor, dict[str, float]]]


@dataclass
class LightGCNConfig:
    """LightGCN's settings.

    ``l2`` weighs ``0.5 * (|e_u|^2 + |e_i|^2 + |e_j|^2) / batch`` over the batch's *ego* embeddings (as in
    LightGCN; RULE's code has no L2). ``node_dropout`` drops each user-item edge of the normalised graph
    (both of its directions together) with this probability during training and rescales the kept ones by
    ``1 / (1 - p)`` (NGCF/RULE use 0.1, LightGCN 0). ``init_std``: the ego embeddings are drawn from
    ``N(0, init_std^2)`` (the LightGCN PyTorch port's 0.1).
    """

    dim: int = 64
    layers: int = 3
    combine: str = "mean"
    l2: float = 1e-4
    node_dropout: float = 0.0
    init_std: float = 0.1

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim (the ego embedding size) must be >= 1, got {self.dim}")
        if self.layers < 0:
            raise ValueError(f"layers (propagation steps) must be >= 0, got {self.layers}")
        if self.combine not in COMBINES:
            raise ValueError(f"combine must be 'mean' (LightGCN) or 'concat' (RULE), got {self.combine!r}")
        if not (self.l2 >= 0 and math.isfinite(self.l2)):
            raise ValueError(f"l2 must be a finite number >= 0, got {self.l2}")
        if not 0.0 <= self.node_dropout < 1.0:
            raise ValueError(f"node_dropout must lie in [0, 1), got {self.node_dropout}")
        if not (self.init_std > 0 and math.isfinite(self.init_std)):
            raise ValueError(f"init_std must be > 0, got {self.init_std}")

    @property
    def out_dim(self) -> int:
        """Size of the final (propagated) user and item vectors."""
        return self.dim * (self.layers + 1) if self.combine == "concat" else self.dim


# --------------------------------------------------------------------------------------------- the graph


@dataclass
class _Block:
    """One off-diagonal block of ``Â`` in CSR form, each stored entry tagged with its user-item edge."""

    crow: Tensor  # (rows + 1,) int32 (int64 past 2^31 entries)
    col: Tensor  # (num_edges,) like crow
    edge: Tensor  # (num_edges,) int64: which interaction each entry is
    shape: tuple[int, int]

    def matrix(self, edge_weight: Tensor) -> Tensor:
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(self.crow, self.col, edge_weight[self.edge], self.shape,
                                           check_invariants=False)

    def to(self, device: torch.device) -> _Block:
        return _Block(self.crow.to(device), self.col.to(device), self.edge.to(device), self.shape)


@dataclass
class _Graph:
    """``Â`` as its two blocks: users x items (``W``) and items x users (``W^T``); ``weight`` per edge."""

    user_item: _Block
    item_user: _Block
    weight: Tensor  # (num_edges,) float32: 1 / sqrt(deg(u) * deg(i))

    def blocks(self, keep: Tensor | None = None, scale: float = 1.0) -> tuple[Tensor, Tensor]:
        """``(W, W^T)`` as torch CSR tensors; ``keep`` (per edge) zeroes the dropped edges in both."""
        weight = self.weight if keep is None else self.weight * keep.to(self.weight.dtype) * scale
        return self.user_item.matrix(weight), self.item_user.matrix(weight)

    def to(self, device: torch.device) -> _Graph:
        return _Graph(self.user_item.to(device), self.item_user.to(device), self.weight.to(device))


def _csr_block(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int) -> _Block:
    """The CSR structure of entries ``(rows[e], cols[e])``, edge ``e`` (no duplicates)."""
    order = np.lexsort((cols, rows))
    crow = np.zeros(num_rows + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_rows), out=crow[1:])
    # int32 indices where they fit: the CPU (MKL) kernel converts int64 ones on every product.
    index = np.int32 if max(len(rows), num_rows, num_cols) < 2**31 - 1 else np.int64
    return _Block(torch.from_numpy(crow.astype(index)), torch.from_numpy(cols[order].astype(index)),
                  torch.from_numpy(order.astype(np.int64)), (num_rows, num_cols))


def _build_graph(train: csr_matrix) -> tuple[_Graph, csr_matrix]:
    matrix = binary_interactions(train)
    num_rows, num_cols = matrix.shape
    user_degree = np.diff(matrix.indptr)
    users = np.repeat(np.arange(num_rows, dtype=np.int64), user_degree)
    items = matrix.indices.astype(np.int64)
    item_degree = np.bincount(items, minlength=num_cols)
    # Every edge has two endpoints of degree >= 1; the isolated (padding) nodes have no entries, so no zero
    # degree is ever divided by.
    weight = 1.0 / np.sqrt(user_degree[users].astype(np.float64) * item_degree[items])
    graph = _Graph(_csr_block(users, items, num_rows, num_cols), _csr_block(items, users, num_cols, num_rows),
                   torch.from_numpy(weight.astype(np.float32)))
    return graph, matrix


def normalized_adjacency(train: csr_matrix) -> Tensor:
    """``D^-1/2 A D^-1/2`` of the user-item graph of ``train`` as a torch sparse CSR tensor (float32).

    ``train`` is a binary ``(num_users + 1, num_items + 1)`` interaction matrix whose row and column 0 are
    empty (padding). The nodes are the users ``0..num_users`` followed by the items ``0..num_items`` (item
    ``i`` is node ``num_users + 1 + i``); the padding nodes are isolated (degree 0: all-zero rows and columns).
    The result is symmetric; entry (u, i) is ``1 / sqrt(deg(u) deg(i))``. (The model propagates with the
    two off-diagonal blocks of this matrix, which is the same product without the zero blocks.)
    """
    from scipy import sparse

    graph, matrix = _build_graph(train)
    weights = sparse.csr_matrix((graph.weight.numpy(), matrix.indices, matrix.indptr), shape=matrix.shape)
    full = sparse.bmat([[None, weights], [weights.T, None]], format="csr")
    full.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(full.indptr.astype(np.int64)),
                                       torch.from_numpy(full.indices.astype(np.int64)),
                                       torch.from_numpy(full.data.astype(np.float32)), full.shape)


class _SparseProduct(torch.autograd.Function):
    """``matrix @ x`` with the transpose given: the backward is ``transpose @ grad``.

    Autograd's own backward of a CSR product transposes the matrix on every call, several times slower
    than the forward on CPU; the transposed block is built once with the graph.
    """

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, transpose: Tensor, x: Tensor) -> Tensor:
        ctx.transpose = transpose
        return torch.sparse.mm(matrix, x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:
        return None, None, torch.sparse.mm(ctx.transpose, grad.contiguous())


# --------------------------------------------------------------------------------------------- the model


class LightGCN(InteractionRecommender):
    """LightGCN over a user-item graph: ego user embeddings plus an item table of ego item embeddings.

    The ``lightgcn`` backbone (:mod:`pocketrec.backbones.base`): interaction data
    (:class:`~pocketrec.data.interactions.InteractionDataset`), BPR batches, CF full-ranking evaluation
    (Recall/NDCG/Precision@10/20/50, the user's earlier items excluded), selection on NDCG@20. A device
    gets the propagated item vectors as its item table and its user's propagated vector as the query.

    ``table`` (any :class:`~pocketrec.tables.base.ItemTable` of width ``config.dim``) holds the ego item
    embeddings; ``table.all_rows()`` gives them to the propagation. Default: a :class:`DenseTable`.
    Initialisation: every ego embedding (users, and the default table's items) is drawn from
    ``N(0, config.init_std^2)`` with std 0.1 by default, as in the LightGCN PyTorch port (the TF original
    and RULE use Xavier); the padding rows are zero.

    The graph (the training interactions) is not part of the state dict: pass ``graph`` or call
    :meth:`set_graph` before propagating (a model rebuilt from a checkpoint needs it again).

    Evaluation: :meth:`score_users` outside training (in eval mode, or with gradients off) scores with the
    propagated vectors cached by :meth:`propagated`, computed once and recomputed only when a parameter
    changed (an optimiser step, ``load_state_dict``), the graph changed or the model moved; so an
    evaluation over many user chunks propagates once. ``train()`` drops the cache.
    """

    backbone: ClassVar[str] = "lightgcn"
    config_class: ClassVar[type] = LightGCNConfig

    def __init__(self, num_users: int, num_items: int, config: LightGCNConfig | None = None,
                 table: ItemTable | None = None, graph: csr_matrix | None = None) -> None:
        super().__init__()
        config = config or LightGCNConfig()
        if num_users < 1 or num_items < 1:
            raise ValueError(f"num_users and num_items must be >= 1, got {num_users} and {num_items}")
        self.config = config
        self.num_users = int(num_users)
        if table is None:
            table = DenseTable(num_items, config.dim, init_std=config.init_std)
        if not isinstance(table, ItemTable):
            raise TypeError(f"table must be an ItemTable, got {type(table).__name__}")
        if table.num_items != num_items or table.dim != config.dim:
            raise ValueError(f"the item table has {table.num_items} items of width {table.dim}; LightGCN needs "
                             f"{num_items} items of width config.dim={config.dim}")
        self.table = table
        self.user_embedding = nn.Embedding(self.num_users + 1, config.dim)
        with torch.no_grad():
            self.user_embedding.weight.normal_(0.0, config.init_std)
            self.user_embedding.weight[0].zero_()
        self._graph: _Graph | None = None
        self._graph_on: dict[str, _Graph] = {}
        self._graph_version = 0
        self._cache: tuple[Any, Tensor, Tensor] | None = None
        if graph is not None:
            self.set_graph(graph)

    @property
    def num_items(self) -> int:
        return self.table.num_items

    @property
    def out_dim(self) -> int:
        return self.config.out_dim

    def set_graph(self, train: csr_matrix) -> None:
        """Use the interactions ``train`` (``(num_users + 1, num_items + 1)``, binary) as the graph."""
        shape = (self.num_users + 1, self.num_items + 1)
        if tuple(train.shape) != shape:
            raise ValueError(f"the graph's interaction matrix has shape {tuple(train.shape)}; this model needs "
                             f"{shape} (num_users + 1, num_items + 1)")
        self._graph = _build_graph(train)[0]
        self._graph_on = {}
        self._graph_version += 1
        self._cache = None

    def _graph_for(self, device: torch.device) -> _Graph:
        if self._graph is None:
            raise RuntimeError("LightGCN has no graph: pass graph= to the constructor or call set_graph(train) "
                               "with the training interactions")
        key = str(device)
        if key not in self._graph_on:
            self._graph_on[key] = self._graph if device.type == "cpu" else self._graph.to(device)
        return self._graph_on[key]

    def ego_embeddings(self) -> tuple[Tensor, Tensor]:
        """Ego user rows ``(num_users + 1, dim)`` and item rows ``(num_items + 1, dim)`` (differentiable)."""
        items = self.table.all_rows()
        if items.shape != (self.num_items + 1, self.config.dim):
            raise ValueError(f"table.all_rows() has shape {tuple(items.shape)}, expected "
                             f"{(self.num_items + 1, self.config.dim)}")
        return self.user_embedding.weight, items

    def _propagate(self, dropout: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Final user and item vectors, and the ego rows they came from.

        Each layer is ``users' = W items``, ``items' = W^T users`` with ``W`` the users x items block of
        ``Â`` (the product with the whole adjacency, without its zero blocks and without concatenating
        users and items into one node matrix).
        """
        ego_users, ego_items = self.ego_embeddings()
        ego_items = ego_items.to(ego_users.dtype)
        graph = self._graph_for(ego_users.device)
        p = self.config.node_dropout
        if dropout and p > 0:
            keep = torch.rand(graph.weight.shape, device=ego_users.device) >= p
            user_item, item_user = graph.blocks(keep, 1.0 / (1.0 - p))
        else:
            user_item, item_user = graph.blocks()
        users, items = ego_users, ego_items
        user_layers, item_layers = [users], [items]
        for _ in range(self.config.layers):
            users, items = (_SparseProduct.apply(user_item, item_user, items),
                            _SparseProduct.apply(item_user, user_item, users))
            user_layers.append(users)
            item_layers.append(items)
        if self.config.combine == "concat":
            return torch.cat(user_layers, dim=1), torch.cat(item_layers, dim=1), ego_users, ego_items
        scale = 1.0 / (self.config.layers + 1)
        return sum(user_layers) * scale, sum(item_layers) * scale, ego_users, ego_items

    def propagate(self) -> tuple[Tensor, Tensor]:
        """Final vectors ``(num_users + 1, out_dim)`` and ``(num_items + 1, out_dim)``, differentiable.

        Node dropout applies in training mode. Costs ``2 * layers`` sparse products, each over every edge.
        """
        users, items, _, _ = self._propagate(dropout=self.training)
        return users, items

    def forward(self) -> tuple[Tensor, Tensor]:
        return self.propagate()

    def _cache_key(self) -> tuple[Any, ...]:
        tensors = [*self.parameters(), *self.buffers()]
        return (self._graph_version, tuple((t.data_ptr(), t._version) for t in tensors))

    @torch.no_grad()
    def propagated(self) -> tuple[Tensor, Tensor]:
        """The final vectors without node dropout and without gradients, cached until a weight changes.

        The user and item padding rows are zero. Do not modify the returned tensors in place.
        """
        key = self._cache_key()
        if self._cache is None or self._cache[0] != key:
            self._cache = None  # free the old vectors before computing the new ones
            users, items, _, _ = self._propagate(dropout=False)
            users[0] = 0.0
            items[0] = 0.0
            self._cache = (key, users, items)
        return self._cache[1], self._cache[2]

    def train(self, mode: bool = True) -> LightGCN:
        super().train(mode)
        if mode:
            self._cache = None
        return self

    def score_users(self, users: Tensor) -> Tensor:
        """Scores ``(B, num_items + 1)`` of the users ``users (B,)`` against every item; column 0 masked.

        Differentiable (a fresh propagation) only in training mode with gradients on; otherwise the cached
        vectors of :meth:`propagated` are used, so an evaluation propagates once.
        """
        if self.training and torch.is_grad_enabled():
            user_vectors, item_vectors = self.propagate()
        else:
            user_vectors, item_vectors = self.propagated()
        users = users.to(user_vectors.device)
        return mask_padding_column(user_vectors[users] @ item_vectors.t())

    def propagated_user_vectors(self) -> Tensor:
        """Final user vectors ``(num_users + 1, out_dim)`` (a copy; row 0 zero): what a user's device stores."""
        return self.propagated()[0].clone()

    def propagated_item_table(self, dtype: str = "float32") -> DenseTable:
        """A :class:`DenseTable` (``out_dim`` wide, stored at ``dtype``) of the final item vectors.

        Its ``score(user_vector)`` equals :meth:`score_users`: it is what a device stores and ranks with.
        """
        items = self.propagated()[1]
        table = DenseTable(self.num_items, self.out_dim, dtype=dtype)
        with torch.no_grad():
            table.weight.copy_(items.detach().float().cpu())
        return table.to(items.device)

    # ------------------------------------------------------------------ the backbone interface
    @classmethod
    def build_teacher(cls, dataset: Any, config: LightGCNConfig) -> LightGCN:
        model = cls(dataset.num_users, dataset.num_items, config)
        model.attach(dataset)
        return model

    @classmethod
    def from_checkpoint(cls, config: Any, table: ItemTable, meta: dict[str, Any]) -> LightGCN:
        """The model without its graph: :meth:`attach` a dataset before training or evaluating it."""
        return cls(int(meta["num_users"]), table.num_items, config, table)

    def _take(self, dataset: Any) -> None:
        """The users' items, and ``dataset``'s training interactions as the graph."""
        super()._take(dataset)
        self.set_graph(dataset.train)

    def training_loss(self) -> LossFn:
        return bpr_loss(self)

    def device_table(self) -> ItemTable:
        """The propagated item vectors: a device ranks with them and never runs the graph."""
        return self.propagated_item_table()

    def device_user_vectors(self) -> Tensor:
        """The propagated user vectors (a device never runs the graph)."""
        return self.propagated()[0]

    def to_user_vectors(self, dtype: str = "float32") -> UserVectorModel:
        """This model as a device sees it: a :class:`~pocketrec.backbones.user_vectors.UserVectorModel` whose
        user table holds the propagated user vectors and whose item table is :meth:`propagated_item_table`
        (stored at ``dtype``); its scores are this model's. The users are frozen (``train_users=False``).
        Needs the graph (:meth:`attach` or :meth:`set_graph`); an attached model passes its dataset on."""
        users = self.propagated_user_vectors()
        model = UserVectorModel(self.num_users, self.propagated_item_table(dtype),
                                UserVectorConfig(dim=self.out_dim), user_vectors=users)
        if self._attached is not None:
            model.attach(self._attached)
        return model.to(users.device).eval()

    def extra_repr(self) -> str:
        c = self.config
        return (f"num_users={self.num_users}, num_items={self.num_items}, dim={c.dim}, layers={c.layers}, "
                f"combine={c.combine}, out_dim={self.out_dim}")


# --------------------------------------------------------------------------------------------- the BPR loss


def bpr_loss(model: LightGCN, config: LightGCNConfig | None = None) -> LossFn:
    """``loss_fn(batch) -> (loss, parts)`` for :class:`BPRBatches` batches.

    ``loss = mean softplus(s(u, j) - s(u, i)) + l2 * 0.5 * (|e_u|^2 + |e_i|^2 + |e_j|^2) / B`` (``-log
    sigmoid`` of the score margin, written stably), the scores from one full-graph propagation per batch
    and the L2 on the batch's ego embeddings (``config.l2``, default ``model.config.l2``). ``parts``:
    ``{"bpr": ..., "l2": ...}``, the L2 part already weighted (``bpr + l2 == loss``).
    """
    config = config or model.config

    def loss_fn(batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        users, items, ego_users, ego_items = model._propagate(dropout=model.training)
        batch = batch.to(users.device)
        u, i, j = batch[:, 0], batch[:, 1], batch[:, 2]
        bpr = bpr_term(users[u], items[i], items[j])
        l2 = 0.5 * (ego_users[u].pow(2).sum() + ego_items[i].pow(2).sum() + ego_items[j].pow(2).sum()) / len(batch)
        l2 = config.l2 * l2
        if is_distributed():  # means over this rank's slice, weighted for DDP's average (torch.distributed)
            weight = shard_weights(len(batch))[0]
            bpr, l2 = bpr * weight, l2 * weight
        return bpr + l2, {"bpr": float(bpr.detach()), "l2": float(l2.detach())}

    return loss_fn
