"""Accuracy estimators for elastic-embedding architectures: RULE's Neural FM and a ridge baseline.

RULE (Chen et al., KDD 2021) labels a few hundred random architectures with their validation accuracy, fits
a Neural Factorization Machine (He & Chua, SIGIR 2017) on them and lets the evolutionary search query it in
place of the expensive evaluation. The input is :meth:`ArchitectureSpace.encode
<pocketrec.search.architectures.ArchitectureSpace.encode>`: ``G`` rows ``[one_hot_G(g); multi_hot_N(S_g)]``.

:class:`ArchitectureEstimator` follows the paper's NFM with two changes. (1) The authors give each (group,
subset) row its own embedding, initialised with the row's encoding, so a row never seen in training keeps its
untrained initial vector. Here the embedding of a row is a *linear map* ``W`` of its encoding (``G + N ->
hidden``, ``W = I`` at the start when ``hidden = G + N``, i.e. the same initial vectors), which shares what
is learned about a block or a group across rows, so unseen architectures get a meaningful score. (2) NFM's
first-order term ``sum_i w_i x_i`` over the entries of the encoding is kept (He & Chua's model has it): the
bi-interaction pools only *pairs* of rows, so without it a group's own blocks reach the score only through
their products with the other rows; adding it raised the tau below from ~0.24 to ~0.41 (200 labels).

:class:`RidgeEstimator` is a closed-form comparison: ridge regression on each group's block bits and
one-hot block count (additive over groups, with diminishing returns expressible per group, the penalty
chosen on the held-out part).

Measured (pocketrec's synthetic labels shaped like validation recall, 0.13 to 0.35: per-group gains with
diminishing returns in per-block qualities, groups weighted by popularity, a penalty on uneven block
counts across groups, noise sd 0.003; 8 groups x 8 blocks, 3 seeds, labels spread over all sizes): on 500
held-out architectures of every size both rank well (Kendall tau NFM 0.91 / ridge 0.93 with 200 labels,
0.93 / 0.95 with 800), but what the search needs is the ranking *among architectures that fill one budget*
(300 random ones at 40% of the span), where the NFM reaches tau 0.41 (200 labels) / 0.64 (800) and the
ridge 0.65 / 0.83. With a three times stronger cross-group penalty plus a reward for neighbouring groups
sharing blocks (interactions the ridge cannot express) the ridge still led: 0.53 / 0.68 against 0.30 /
0.51. Tuning the NFM (no dropout, hidden 64, Adam at lr 0.003, Adagrad at lr 0.01 or 0.2, 800 epochs)
moved it by at most 0.04 or made it worse. The NFM fits in 0.7 s (200 labels) to 2.1 s (800) on one CPU
thread, the ridge in about 10 ms. Hence the default (:data:`DEFAULT_ESTIMATOR`, used by
:func:`make_estimator`) is the ridge; the NFM remains available as ``"nfm"``, the paper's method, with the
same ``fit``/``predict``/``state`` interface.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau
from torch import Tensor, nn

DEFAULT_ESTIMATOR = "ridge"
ESTIMATORS = ("nfm", "ridge")
LABEL_SCALE = 100.0  # the authors fit labels (recall in 0..1) multiplied by 100


@dataclass
class FitReport:
    """What :meth:`fit` did: RMSEs on the labels' own scale (not x100), Kendall tau of the held-out
    predictions (``nan`` without a held-out part), epochs run, the epoch kept, and wall-clock seconds."""

    train_rmse: float
    valid_rmse: float
    valid_tau: float
    epochs: int
    best_epoch: int
    num_train: int
    num_valid: int
    seconds: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def kendall_tau(pred: np.ndarray, true: np.ndarray) -> float:
    """Kendall's tau-b (``scipy.stats.kendalltau``) between predicted and true scores: how well the
    estimator *ranks* architectures, which is all the search needs. ``nan`` for fewer than two points or
    a constant input."""
    pred, true = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(true, dtype=np.float64).ravel()
    if pred.shape != true.shape:
        raise ValueError(f"pred and true differ in length: {pred.shape} vs {true.shape}")
    if len(pred) < 2 or np.ptp(pred) == 0 or np.ptp(true) == 0:
        return float("nan")
    return float(kendalltau(pred, true).statistic)


def _as_masks(masks: np.ndarray | Tensor, num_groups: int, num_blocks: int) -> np.ndarray:
    masks = masks.detach().cpu().numpy() if isinstance(masks, Tensor) else np.asarray(masks)
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[1:] != (num_groups, num_blocks):
        raise ValueError(f"expected masks of shape (K, {num_groups}, {num_blocks}), got {masks.shape}")
    return masks.astype(bool)


def _encode(masks: np.ndarray) -> np.ndarray:
    """RULE's encoding (the same as ``ArchitectureSpace.encode``, which needs group sizes we do not)."""
    K, G, N = masks.shape
    out = np.zeros((K, G, G + N), dtype=np.float32)
    out[:, np.arange(G), np.arange(G)] = 1.0
    out[:, :, G:] = masks
    return out


def _split(num: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0.0 <= valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must lie in [0, 1), got {valid_fraction}")
    order = np.random.default_rng(seed).permutation(num)
    num_valid = int(round(num * valid_fraction))
    if num_valid < 2 or num - num_valid < 2:
        return order, order[:0]
    return order[num_valid:], order[:num_valid]


def _check_labels(masks: np.ndarray, labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if len(labels) != len(masks):
        raise ValueError(f"{len(masks)} architectures but {len(labels)} labels")
    if len(labels) < 2:
        raise ValueError("need at least two labelled architectures")
    if not np.all(np.isfinite(labels)):
        raise ValueError("labels must be finite")
    return labels


@contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a) - np.asarray(b)) ** 2))) if len(a) else float("nan")


class ArchitectureEstimator(nn.Module):
    """RULE's Neural FM over the architecture encoding, predicting a metric (e.g. validation Recall@20).

    For a mask, each group's encoding row ``x_g`` (``G + N``) is embedded as ``v_g = W x_g`` (``hidden``,
    default ``G + N`` with ``W = I`` at the start), pooled by bi-interaction ``0.5 * ((sum_g v_g)^2 -
    sum_g v_g^2)`` (the pairwise element-wise products of the rows), then dropout(0.4) -> Linear(hidden,
    64) -> ReLU -> dropout(0.2) -> Linear(64, 1), plus a global bias (started at the mean label by
    :meth:`fit`) and, with ``linear`` (default), NFM's first-order term: one weight per entry of the
    ``(G, G + N)`` encoding, i.e. per (group, block) bit. It works on labels x100 (as the authors) and
    :meth:`predict` returns the labels' scale.

    Parameters are initialised from ``seed`` (the caller's global torch RNG is left untouched).
    """

    kind = "nfm"

    def __init__(self, num_groups: int, num_blocks: int, *, hidden: int | None = None, mlp: int = 64,
                 dropout: tuple[float, float] = (0.4, 0.2), linear: bool = True, seed: int = 0) -> None:
        super().__init__()
        if num_groups < 1 or num_blocks < 1:
            raise ValueError(f"need at least one group and one block, got {num_groups} x {num_blocks}")
        self.num_groups, self.num_blocks = int(num_groups), int(num_blocks)
        width = self.num_groups + self.num_blocks
        self.hidden = width if hidden is None else int(hidden)
        self.mlp_width = int(mlp)
        self.dropout = (float(dropout[0]), float(dropout[1]))
        self.seed = int(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.embed = nn.Linear(width, self.hidden, bias=False)
            self.mlp = nn.Sequential(
                nn.Dropout(self.dropout[0]), nn.Linear(self.hidden, self.mlp_width), nn.ReLU(),
                nn.Dropout(self.dropout[1]), nn.Linear(self.mlp_width, 1))
            self.bias = nn.Parameter(torch.zeros(()))
            # NFM's first-order term sum_i w_i x_i over the entries of the encoding (group-specific block bits)
            self.linear = nn.Parameter(torch.zeros(self.num_groups, width)) if linear else None
            with torch.no_grad():  # "each row's embedding initialised with its own encoding"
                eye = torch.eye(self.hidden, width)
                if self.hidden > width:  # the extra dimensions start small and random
                    eye[width:] = torch.randn(self.hidden - width, width) * 0.01
                self.embed.weight.copy_(eye)

    # ------------------------------------------------------------------ model

    def forward(self, encoded: Tensor) -> Tensor:
        """Scores ``(K,)`` on the x100 scale for encodings ``(K, G, G + N)``."""
        v = self.embed(encoded)  # (K, G, hidden)
        pooled = 0.5 * (v.sum(dim=1).pow(2) - v.pow(2).sum(dim=1))
        out = self.mlp(pooled).squeeze(-1) + self.bias
        if self.linear is not None:
            out = out + (encoded * self.linear).sum(dim=(1, 2))
        return out

    @torch.no_grad()
    def predict(self, masks: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
        """Predicted metric ``(K,)`` float64 (labels' own scale) for masks ``(K, G, N)`` or one ``(G, N)``;
        in eval mode (no dropout), in batches."""
        masks = _as_masks(masks, self.num_groups, self.num_blocks)
        self.eval()
        out = np.empty(len(masks), dtype=np.float64)
        for start in range(0, len(masks), batch_size):
            enc = torch.from_numpy(_encode(masks[start:start + batch_size]))
            out[start:start + len(enc)] = self(enc).double().numpy() / LABEL_SCALE
        return out

    # ------------------------------------------------------------------ training

    def fit(self, masks: np.ndarray, labels: np.ndarray, *, epochs: int = 300, lr: float = 0.05,
            batch_size: int = 64, weight_decay: float = 0.0, valid_fraction: float = 0.2,
            seed: int = 0, threads: int | None = 1) -> FitReport:
        """Fit on labelled architectures: squared error on ``labels * 100``, Adagrad (``lr`` 0.05, as the
        authors), keeping the parameters of the epoch with the lowest held-out error.

        ``valid_fraction`` of the architectures (drawn with ``seed``) are held out to choose that epoch;
        with ``0`` (or too few to hold out) every one trains and the last epoch is kept. The defaults
        (300 epochs of mini-batches of 64) were chosen on 200 to 800 labels: the authors' batch of 1024
        would give one step per epoch at that size, and Adagrad's shrinking steps then stall. Shuffling and
        dropout draw from ``seed``; the caller's global torch RNG is left untouched. ``threads``: torch's
        intra-op threads while fitting (restored after; ``None`` leaves them): the tensors are tiny, and on
        a busy 2-core machine one thread fitted 250 labels in 2 s where the default two took 21 s.
        """
        masks = _as_masks(masks, self.num_groups, self.num_blocks)
        labels = _check_labels(masks, labels)
        if epochs < 1 or batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        start = time.perf_counter()
        train, valid = _split(len(masks), valid_fraction, seed)
        x = torch.from_numpy(_encode(masks))
        y = torch.from_numpy(labels * LABEL_SCALE).float()
        x_train, y_train = x[train], y[train]
        optimizer = torch.optim.Adagrad(self.parameters(), lr=lr, weight_decay=weight_decay)
        best_loss, best_epoch, best_state = math.inf, 0, None
        with _torch_threads(threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            with torch.no_grad():
                self.bias.fill_(float(y_train.mean()))
            for epoch in range(1, epochs + 1):
                self.train()
                for idx in torch.randperm(len(train)).split(batch_size):
                    optimizer.zero_grad()
                    loss = (self(x_train[idx]) - y_train[idx]).pow(2).mean()
                    loss.backward()
                    optimizer.step()
                if len(valid):
                    self.eval()
                    with torch.no_grad():
                        valid_loss = float((self(x[valid]) - y[valid]).pow(2).mean())
                    if valid_loss < best_loss:
                        best_loss, best_epoch = valid_loss, epoch
                        best_state = {k: t.detach().clone() for k, t in self.state_dict().items()}
        if best_state is not None:
            self.load_state_dict(best_state)
        else:
            best_epoch = epochs
        pred = self.predict(masks)
        return FitReport(train_rmse=_rmse(pred[train], labels[train]), valid_rmse=_rmse(pred[valid], labels[valid]),
                         valid_tau=kendall_tau(pred[valid], labels[valid]) if len(valid) else float("nan"),
                         epochs=epochs, best_epoch=best_epoch, num_train=len(train), num_valid=len(valid),
                         seconds=time.perf_counter() - start)

    # ------------------------------------------------------------------ persistence

    def config(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments."""
        return {"kind": self.kind, "num_groups": self.num_groups, "num_blocks": self.num_blocks,
                "hidden": self.hidden, "mlp": self.mlp_width, "dropout": list(self.dropout),
                "linear": self.linear is not None, "seed": self.seed}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, config)``: parameters as a flat dict of float32 numpy arrays (what ``safetensors``
        saves) and the JSON-serialisable config; :meth:`from_state` rebuilds an identical estimator."""
        arrays = {k: t.detach().cpu().numpy().copy() for k, t in self.state_dict().items()}
        return arrays, self.config()

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> ArchitectureEstimator:
        """The estimator saved by :meth:`state`."""
        config = dict(config)
        kind = config.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"state is of a {kind!r} estimator, not {cls.kind!r}")
        model = cls(config.pop("num_groups"), config.pop("num_blocks"), hidden=config.get("hidden"),
                    mlp=config.get("mlp", 64), dropout=tuple(config.get("dropout", (0.4, 0.2))),
                    linear=bool(config.get("linear", True)), seed=config.get("seed", 0))
        model.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in arrays.items()})
        model.eval()
        return model


class RidgeEstimator:
    """Ridge regression on per-group features: the ``N`` block bits and the one-hot block count ``|S_g|``
    of every group (``2 * G * N`` features, standardised). The score is additive over groups, so it cannot
    learn interactions between groups, but it fits in milliseconds and is hard to overfit. The penalty is
    chosen from ``alphas`` on the held-out part (then refitted on everything)."""

    kind = "ridge"

    def __init__(self, num_groups: int, num_blocks: int, *, alphas: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0, 100.0)
                 ) -> None:
        if num_groups < 1 or num_blocks < 1:
            raise ValueError(f"need at least one group and one block, got {num_groups} x {num_blocks}")
        self.num_groups, self.num_blocks = int(num_groups), int(num_blocks)
        self.alphas = tuple(float(a) for a in alphas)
        self.alpha = self.alphas[0]
        dim = 2 * self.num_groups * self.num_blocks
        self.coef = np.zeros(dim)
        self.intercept = 0.0
        self.mean = np.zeros(dim)
        self.scale = np.ones(dim)

    def features(self, masks: np.ndarray) -> np.ndarray:
        """``(K, 2 * G * N)``: block bits, then one-hot block counts (``|S_g| = 1..N``), per group."""
        masks = _as_masks(masks, self.num_groups, self.num_blocks)
        K, G, N = masks.shape
        counts = np.zeros((K, G, N))
        sizes = masks.sum(axis=2)
        np.put_along_axis(counts, np.clip(sizes - 1, 0, N - 1)[..., None], 1.0, axis=2)
        return np.concatenate([masks.reshape(K, G * N).astype(np.float64), counts.reshape(K, G * N)], axis=1)

    def _solve(self, feats: np.ndarray, labels: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
        z = (feats - self.mean) / self.scale
        y_mean = labels.mean()
        coef = np.linalg.solve(z.T @ z + alpha * np.eye(z.shape[1]), z.T @ (labels - y_mean))
        return coef, float(y_mean)

    def fit(self, masks: np.ndarray, labels: np.ndarray, *, valid_fraction: float = 0.2, seed: int = 0,
            **_: Any) -> FitReport:
        """Choose the penalty on the held-out part, refit on every architecture. Extra keyword arguments
        of the NFM's ``fit`` (epochs, lr...) are accepted and ignored, so callers can switch kinds."""
        masks = _as_masks(masks, self.num_groups, self.num_blocks)
        labels = _check_labels(masks, labels)
        start = time.perf_counter()
        feats = self.features(masks)
        train, valid = _split(len(masks), valid_fraction, seed)
        self.mean = feats.mean(axis=0)
        self.scale = np.where(feats.std(axis=0) > 0, feats.std(axis=0), 1.0)
        best = (math.inf, self.alphas[0])
        if len(valid):
            for alpha in self.alphas:
                coef, icpt = self._solve(feats[train], labels[train], alpha)
                err = _rmse((feats[valid] - self.mean) / self.scale @ coef + icpt, labels[valid])
                best = min(best, (err, alpha))
        self.alpha = best[1]
        # the report's valid numbers are those of the chosen penalty fitted without the held-out part
        self.coef, self.intercept = self._solve(feats[train], labels[train], self.alpha)
        pred = self.predict(masks)
        report = FitReport(train_rmse=_rmse(pred[train], labels[train]), valid_rmse=_rmse(pred[valid], labels[valid]),
                           valid_tau=kendall_tau(pred[valid], labels[valid]) if len(valid) else float("nan"),
                           epochs=1, best_epoch=1, num_train=len(train), num_valid=len(valid), seconds=0.0)
        self.coef, self.intercept = self._solve(feats, labels, self.alpha)
        report.seconds = time.perf_counter() - start
        return report

    def predict(self, masks: np.ndarray) -> np.ndarray:
        """Predicted metric ``(K,)`` float64 for masks ``(K, G, N)`` or one ``(G, N)``."""
        return (self.features(masks) - self.mean) / self.scale @ self.coef + self.intercept

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_groups": self.num_groups, "num_blocks": self.num_blocks,
                "alphas": list(self.alphas), "alpha": self.alpha}

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """``(arrays, config)`` as :meth:`ArchitectureEstimator.state`."""
        arrays = {"coef": self.coef.copy(), "intercept": np.array(self.intercept), "mean": self.mean.copy(),
                  "scale": self.scale.copy()}
        return arrays, self.config()

    @classmethod
    def from_state(cls, arrays: dict[str, np.ndarray], config: dict[str, Any]) -> RidgeEstimator:
        if config.get("kind", cls.kind) != cls.kind:
            raise ValueError(f"state is of a {config.get('kind')!r} estimator, not {cls.kind!r}")
        model = cls(config["num_groups"], config["num_blocks"], alphas=tuple(config.get("alphas", (1.0,))))
        model.alpha = float(config.get("alpha", model.alphas[0]))
        model.coef = np.asarray(arrays["coef"], dtype=np.float64).copy()
        model.intercept = float(np.asarray(arrays["intercept"]))
        model.mean = np.asarray(arrays["mean"], dtype=np.float64).copy()
        model.scale = np.asarray(arrays["scale"], dtype=np.float64).copy()
        return model


Estimator = ArchitectureEstimator | RidgeEstimator


def make_estimator(num_groups: int, num_blocks: int, kind: str = DEFAULT_ESTIMATOR, **kwargs: Any) -> Estimator:
    """A fresh estimator of ``kind`` (``"ridge"``, the default, or ``"nfm"``, RULE's; see the module
    docstring for why); ``kwargs`` go to its constructor."""
    if kind == "nfm":
        return ArchitectureEstimator(num_groups, num_blocks, **kwargs)
    if kind == "ridge":
        return RidgeEstimator(num_groups, num_blocks, **kwargs)
    raise ValueError(f"estimator kind must be one of {', '.join(ESTIMATORS)}, got {kind!r}")


def estimator_from_state(arrays: dict[str, np.ndarray], config: dict[str, Any]) -> Estimator:
    """Rebuild whichever estimator ``state()`` saved (by ``config["kind"]``)."""
    kind = config.get("kind", "nfm")
    if kind == "nfm":
        return ArchitectureEstimator.from_state(arrays, config)
    if kind == "ridge":
        return RidgeEstimator.from_state(arrays, config)
    raise ValueError(f"unknown estimator kind {kind!r} in state")
