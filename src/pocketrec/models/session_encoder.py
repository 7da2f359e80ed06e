"""Session encoder: a SASRec-style causal Transformer with a soft-attention readout.

Follows the teacher/student backbone of OD-Rec and EODRec (docs/methods/teachers.md): item embedding plus
learned positions, LayerNorm, post-LN Transformer layers, then an SR-GNN style soft-attention readout
over the session. Differences from the authors' code, on purpose:

* the mean in the readout runs over the real positions only (the code also sums padded positions);
* the readout is computed for *every prefix at once*: because attention is causal, the hidden state
  at position ``t`` is the same whether the input is the whole session or the prefix ending at ``t``,
  and the readout of prefix ``k`` only needs ``h_1..h_k`` and their running mean. One encoder pass per
  session then gives exactly the loss of SR-GNN prefix expansion (dropout aside);
* optional cosine scoring (``normalize``): queries and item vectors are L2-normalised and scaled by
  ``scale``, as in NISER; it makes the popularity bias of dot products disappear, which matters on the
  very sparse session sets;
* weights start from N(0, 0.02) (BERT) rather than U(-0.1, 0.1);
* an optional ``hybrid`` readout (SR-GNN's): the attention is queried by the *last* position instead of
  the mean and the output is ``W3 [z; h_last]``. With learned absolute positions, the method's mean-queried
  readout has no way to tell which position is the last one, the strongest signal in short sessions;
* an optional ``item`` readout (CORE: Hou et al., "CORE: Simple and Effective Session-based
  Recommendation within Consistent Representation Space", SIGIR 2022): softmax weights from the
  Transformer's states pool the session's *input item vectors*, so the query is a convex combination of
  item vectors and lives in the space the catalogue is scored in.

A recommender is this encoder plus an item table (:mod:`pocketrec.tables`); the table gives both the
input vectors and the catalogue scores, so a compressed table replaces the dense one everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pocketrec.backbones.base import LossFn, Recommender
from pocketrec.tables.base import ItemTable, normalise_row_norms

READOUTS = ("attention", "hybrid", "item", "last")


@dataclass
class EncoderConfig:
    """Shape of the session encoder. ``dim`` must equal the item table's ``dim``."""

    dim: int = 64
    inner: int = 0  # FFN width; 0 means 4 * dim
    layers: int = 1
    heads: int = 1
    dropout: float = 0.3
    attn_dropout: float = 0.2
    max_len: int = 50
    readout: str = "attention"
    normalize: bool = True
    scale: float = 12.0

    def __post_init__(self) -> None:
        """Refuse what the encoder cannot build or train: the attention splits ``dim`` into ``heads``
        equal parts, ``nn.Dropout`` with p=1 zeros everything, cosine scores need a finite ``scale`` > 0.
        ``layers=0`` is allowed (embeddings, positions and readout only)."""
        if self.readout not in READOUTS:
            raise ValueError(f"readout must be one of {READOUTS}, got {self.readout!r}")
        for name in ("dim", "heads", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("inner", "layers"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.dim % self.heads:
            raise ValueError(f"dim={self.dim} is not divisible by heads={self.heads}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.scale < float("inf"):
            raise ValueError(f"scale must be a finite number > 0, got {self.scale}")

    @property
    def ffn_width(self) -> int:
        return self.inner or 4 * self.dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class TransformerLayer(nn.Module):
    """Post-LN (BERT) causal self-attention + GELU feed-forward."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.attn_dropout = cfg.attn_dropout
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=1e-12)
        self.ff1 = nn.Linear(cfg.dim, cfg.ffn_width)
        self.ff2 = nn.Linear(cfg.ffn_width, cfg.dim)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=1e-12)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        # Right padding + a causal mask: a real position only ever sees real positions before it.
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        att = att.transpose(1, 2).reshape(batch, length, dim)
        x = self.norm1(x + self.dropout(self.out(att)))
        return self.norm2(x + self.dropout(self.ff2(F.gelu(self.ff1(x)))))


def later_positions(length: int, device: torch.device) -> Tensor:
    """``(length, length)`` bool, True where position ``t`` comes after the prefix end ``k`` (``t > k``):
    what a prefix readout must not see."""
    return torch.ones(length, length, dtype=torch.bool, device=device).triu(1)


def last_positions(h: Tensor, mask: Tensor) -> Tensor:
    """``h (B, L, d)`` at each row's last real position (``mask (B, L)``, right-padded) -> ``(B, d)``."""
    last = (mask.sum(1) - 1).clamp_min(0)
    return torch.gather(h, 1, last.view(-1, 1, 1).expand(-1, 1, h.shape[2])).squeeze(1)


class AttentionReadout(nn.Module):
    """SR-GNN soft attention: beta_t = w2 . sigmoid(W1 tanh(h_t) + b1 + W2 m), z = sum_t beta_t h_t.

    ``m`` is the mean of the pooled vectors. :meth:`pool` reads out one set per row;
    :meth:`pool_prefixes` reads out every prefix of every row at once.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, dim)
        self.w2 = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, 1, bias=False)

    def _attend(self, h: Tensor, mask: Tensor, query: Tensor) -> Tensor:
        m = mask.unsqueeze(-1).to(h.dtype)
        beta = self.v(torch.sigmoid(self.w1(torch.tanh(h)) + self.w2(query).unsqueeze(1)))
        return (beta * m * h).sum(1)

    def _attend_prefixes(self, h: Tensor, queries: Tensor) -> Tensor:
        """Row ``k`` attends over ``h[:, :k+1]`` with ``queries[:, k]``; a ``(B, L, L, d)`` intermediate,
        small for session lengths (L <= max_len)."""
        length = h.shape[1]
        keys = self.w1(torch.tanh(h))  # (B, L_t, d)
        gates = torch.sigmoid(keys.unsqueeze(1) + self.w2(queries).unsqueeze(2))  # (B, L_k, L_t, d)
        beta = self.v(gates).squeeze(-1)  # (B, L_k, L_t)
        beta = beta.masked_fill(later_positions(length, h.device), 0.0)
        return beta @ h

    def pool(self, h: Tensor, mask: Tensor, items: Tensor | None = None) -> Tensor:
        """``h (B, L, d)``, ``mask (B, L)`` bool -> ``(B, d)``; rows with an empty mask give zeros.
        ``items`` (the input item vectors) is read by :class:`ItemReadout` only."""
        m = mask.unsqueeze(-1).to(h.dtype)
        mean = (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self._attend(h, mask, mean)

    def pool_prefixes(self, h: Tensor, items: Tensor | None = None) -> Tensor:
        """``h (B, L, d)`` -> ``(B, L, d)``: row ``k`` is the readout of ``h[:, :k+1]``."""
        counts = torch.arange(1, h.shape[1] + 1, device=h.device, dtype=h.dtype).view(1, -1, 1)
        return self._attend_prefixes(h, h.cumsum(1) / counts)


class HybridReadout(AttentionReadout):
    """SR-GNN's hybrid readout: attention queried by the last position, then ``W3 [z; h_last]``."""

    def __init__(self, dim: int) -> None:
        super().__init__(dim)
        self.w3 = nn.Linear(2 * dim, dim, bias=False)

    def pool(self, h: Tensor, mask: Tensor, items: Tensor | None = None) -> Tensor:
        last = last_positions(h, mask)
        return self.w3(torch.cat([self._attend(h, mask, last), last], dim=-1))

    def pool_prefixes(self, h: Tensor, items: Tensor | None = None) -> Tensor:
        return self.w3(torch.cat([self._attend_prefixes(h, h), h], dim=-1))


class ItemReadout(nn.Module):
    """CORE's readout: ``alpha = softmax_t(v . h_t)`` over the session, ``z = sum_t alpha_t x_t`` with
    ``x_t`` the input item vectors (not the Transformer's states)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.v = nn.Linear(dim, 1, bias=False)

    @staticmethod
    def _required(items: Tensor | None) -> Tensor:
        if items is None:
            raise ValueError("the item readout pools the input item vectors: pass items")
        return items

    def pool(self, h: Tensor, mask: Tensor, items: Tensor | None = None) -> Tensor:
        items = self._required(items)
        logits = self.v(h).squeeze(-1).masked_fill(~mask, torch.finfo(h.dtype).min)
        alpha = torch.softmax(logits, dim=-1) * mask.to(h.dtype)  # empty rows: all zeros
        return (alpha.unsqueeze(-1) * items).sum(1)

    def pool_prefixes(self, h: Tensor, items: Tensor | None = None) -> Tensor:
        items = self._required(items)
        length = h.shape[1]
        logits = self.v(h).squeeze(-1).unsqueeze(1).expand(-1, length, -1)  # (B, L_k, L_t)
        alpha = torch.softmax(logits.masked_fill(later_positions(length, h.device), torch.finfo(h.dtype).min), dim=-1)
        return alpha @ items


class SessionRecommender(Recommender):
    """Query encoder + item table. ``score(inputs)`` ranks the whole catalogue for each session.

    The ``session`` backbone (:mod:`pocketrec.backbones.base`): batches of whole sessions, cross-entropy
    over the catalogue, SR-GNN-protocol evaluation; a device runs the encoder on the recent items.
    """

    backbone: ClassVar[str] = "session"
    device_query: ClassVar[str] = "session-encoder"
    selection_metric: ClassVar[str] = "mrr@20"
    config_class: ClassVar[type] = EncoderConfig

    def __init__(self, config: EncoderConfig, table: ItemTable) -> None:
        super().__init__()
        if table.dim != config.dim:
            raise ValueError(f"item table has dim={table.dim} but the encoder has dim={config.dim}")
        self.config = config
        self.table = table
        self.positions = nn.Embedding(config.max_len, config.dim)
        self.input_norm = nn.LayerNorm(config.dim, eps=1e-12)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(TransformerLayer(config) for _ in range(config.layers))
        readouts = {"attention": AttentionReadout, "hybrid": HybridReadout, "item": ItemReadout}
        self.readout = readouts[config.readout](config.dim) if config.readout in readouts else None
        self._init_weights()

    def _init_weights(self) -> None:
        for name, param in self.named_parameters():
            if name.startswith("table."):
                continue
            if param.dim() >= 2:
                nn.init.normal_(param, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(param)

    @property
    def num_items(self) -> int:
        return self.table.num_items

    def encoder_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside the item table (positions, Transformer layers, readout)."""
        return [p for name, p in self.named_parameters() if not name.startswith("table.")]

    def hidden(self, inputs: Tensor) -> Tensor:
        """Contextual vectors ``(B, L, d)`` of right-padded ``inputs (B, L)``."""
        return self._states(inputs)[1]

    def _states(self, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """``(item vectors, contextual vectors)``, both ``(B, L, d)``, of right-padded ``inputs (B, L)``."""
        length = inputs.shape[1]
        if length > self.config.max_len:
            raise ValueError(f"input length {length} exceeds max_len={self.config.max_len}; "
                             "truncate to the most recent items")
        pos = self.positions.weight[:length].unsqueeze(0)
        items = self.table(inputs)
        h = self.dropout(self.input_norm(items + pos))
        for layer in self.layers:
            h = layer(h)
        return items, h

    def _finish(self, z: Tensor) -> Tensor:
        return F.normalize(z, dim=-1) * self.config.scale if self.config.normalize else z

    def prefix_queries(self, inputs: Tensor) -> Tensor:
        """Query vectors ``(B, L, d)`` for every prefix: row ``t`` encodes ``inputs[:, :t+1]``."""
        items, h = self._states(inputs)
        z = self.readout.pool_prefixes(h, items) if self.readout is not None else h
        return self._finish(z)

    def encode(self, inputs: Tensor) -> Tensor:
        """Query vectors ``(B, d)`` of whole sessions (right-padded, at least one item each)."""
        items, h = self._states(inputs)
        mask = inputs != 0
        z = self.readout.pool(h, mask, items) if self.readout is not None else last_positions(h, mask)
        return self._finish(z)

    def item_scores(self, queries: Tensor) -> Tensor:
        """Scores ``(B, num_items + 1)`` of query vectors against the catalogue (column 0 masked)."""
        if not self.config.normalize:
            return self.table.score(queries)
        return self.table.cosine_score(queries)

    def scoring_rows(self) -> Tensor:
        """``(num_items + 1, dim)`` rows with ``item_scores(q) == q @ rows.T`` (column 0 aside), differentiable.

        The unit rows when the model scores by cosine. Training losses use it (``train.catalogue_loss``);
        ranking goes through the table's chunked ``score``/``cosine_score`` instead.
        """
        rows = self.table.all_rows()
        if self.config.normalize:
            rows = rows / normalise_row_norms(rows.norm(dim=-1)).unsqueeze(1)
        return rows

    def item_norms(self) -> Tensor:
        """L2 norm of every item row (padding row gets 1)."""
        return self.table.row_norms()

    def score(self, inputs: Tensor) -> Tensor:
        return self.item_scores(self.encode(inputs))

    # ------------------------------------------------------------------ the backbone interface
    @classmethod
    def load_dataset(cls, name_or_path: str) -> Any:
        """A session or per-user sequence dataset (:func:`pocketrec.data.registry.load_dataset`)."""
        from pocketrec.data import registry

        return registry.load_dataset(name_or_path)

    @classmethod
    def build_teacher(cls, dataset: Any, config: EncoderConfig) -> SessionRecommender:
        """The encoder with a dense item table of ``dataset``'s catalogue."""
        from pocketrec.tables.dense import DenseTable

        return cls(config, DenseTable(dataset.num_items, config.dim))

    def training_batches(self, dataset: Any, batch_size: int) -> Any:
        from pocketrec.data.batching import SessionBatches

        return SessionBatches(dataset.train, batch_size, self.config.max_len)

    def training_loss(self) -> LossFn:
        """Cross-entropy of every target position over the whole catalogue."""
        from pocketrec.train.catalogue_loss import catalogue_cross_entropy
        from pocketrec.train.distributed import global_mean
        from pocketrec.train.losses import targets_and_queries

        def loss_fn(batch: Any) -> tuple[Tensor, dict[str, float]]:
            queries, targets = targets_and_queries(self, batch)
            # global_mean: a rank's mean over its slice, weighted for DDP's average (itself in one process)
            return global_mean(catalogue_cross_entropy(queries, self.scoring_rows(), targets), len(targets)), {}
        return loss_fn

    def evaluate(self, dataset: Any, split: str, batch_size: int = 256, progress: bool = False,
                 desc: str = "eval") -> dict[str, float]:
        from pocketrec.eval.evaluate import evaluate

        return evaluate(self, getattr(dataset, split), batch_size=batch_size, progress=progress, desc=desc)

    def device_tensors(self, users: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Every encoder weight (the state dict without the item table) as ``encoder/<name>``, float32; in
        cosine mode also the item-row norms (``scoring/norms``) that the runtime divides scores by."""
        from pocketrec.device.runtime import NORMS

        if users is not None:
            raise ValueError("a session model's artifact serves any user: it takes no users")
        out = {}
        for name, value in self.state_dict().items():
            if name.startswith("table."):
                continue
            arr = value.detach().cpu().numpy()
            if np.issubdtype(arr.dtype, np.floating):
                arr = arr.astype(np.float32)
            out[f"encoder/{name}"] = np.ascontiguousarray(arr)
        if self.config.normalize:
            with torch.no_grad():
                out[NORMS] = np.ascontiguousarray(self.item_norms().detach().cpu().numpy().astype(np.float32))
        return out
