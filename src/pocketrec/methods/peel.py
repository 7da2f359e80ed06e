"""PEEL (Zheng et al., "Personalized Elastic Embedding Learning for On-Device Recommendation"): one elastic
model, refined once per user group, so that each group's devices get the item blocks that matter to them.

The authors released only the pretraining (RULE's elastic training, :mod:`pocketrec.methods.rule`); the
user clustering, the controller, the bi-level optimisation and the selection come from the paper's abstract,
README and figure (``docs/methods/peel.md`` says what is known and what is pocketrec's). What pocketrec
builds (``pocketrec compress --method peel --teacher RULE_RUN``), each choice a setting of :class:`PeelConfig`:

1. **User groups**: k-means (scikit-learn) on the RULE model's user vectors into ``user_groups`` groups
   (:func:`cluster_users`). A user's group is stored next to its vector (``peel.safetensors``); a new user
   goes to the nearest centroid (:func:`nearest_group`).
2. **A rotated copy per user group** (``rotation="users"``, :func:`group_rotation`): the group's copy of the blocks
   and the users' vectors rotated so that the first blocks hold the directions the group's users weigh most.
3. **Refinement** of each copy (:class:`GroupRefiner`) on the group's training interactions: BPR plus
   distillation from the LightGCN teacher RULE was trained from
   (:class:`~pocketrec.methods.cf_compress.CFDistillConfig`), on the full architecture and (``truncated``)
   on a random budget's architecture under the current ``alpha``.
4. **The controller** (:class:`BlockController`): ``alpha (G, N)``, a softmax over each item group's blocks
   from the item group's popularity among the group's users and its recent training loss. Bi-level, first
   order (the AutoEmb baseline of the authors' repository): after every optimiser step on the blocks (a
   training batch, ``alpha`` fixed), one step on the controller (a batch of the group's *held-out*
   interactions, blocks fixed) through a soft version of a random budget's selection (:func:`soft_keep`).
5. **The device scores with the raw blocks**: ``alpha`` decides which blocks a file keeps and in which order
   they are stored (its block priority: :mod:`pocketrec.methods.peel_customize`), not how they are weighed.
   Training scores the same way, so training and serving agree (``benchmarks/peel.py`` compares the torch
   and numpy scores), and a PEEL file is an ordinary elastic table: same layout, bytes, numpy runtime, ONNX
   graph and on-device resizing (:mod:`pocketrec.device.np_resize`).

The epoch of each group is chosen on the group's validation users: the mean Recall@20 over the
architectures of :data:`VALID_FRACTIONS` of the full table (the budgets a group's devices will have, not the
full model alone). A group whose refinement never beats its starting point on that measure keeps it (RULE's
blocks, rotated, and the prior's ``alpha``; recorded as ``refined: false``).
"""

from __future__ import annotations

import dataclasses
import json
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse
from torch import Tensor, nn

from pocketrec.backbones.bpr import BPRBatches
from pocketrec.backbones.user_vectors import UserVectorModel
from pocketrec.config import to_dict
from pocketrec.eval.cf_metrics import evaluate_cf, keep_rows, sample_users
from pocketrec.formats.elastic_arrays import elastic_nbytes, select_by_priority
from pocketrec.methods.cf_compress import (
    CFDistillConfig,
    kd_user_cap,
    kd_users_of,
    load_cf_teacher,
    softmax_kl,
)
from pocketrec.methods.recipe import CompressResult, RecipeConfig
from pocketrec.tables.base import mask_padding_column
from pocketrec.tables.elastic import ElasticTable
from pocketrec.tables.elastic_core import effective_rows
from pocketrec.train.trainer import FitResult, TrainConfig, fit, seed_everything

#: the file of a PEEL run (next to its ``best/``) that holds the user groups and every group's blocks and alpha
PEEL_FILE = "peel.safetensors"
#: the fractions of the full float32 table whose architectures a group's validation averages over
VALID_FRACTIONS = (1 / 16, 1 / 8, 1 / 4, 1 / 2, 1.0)
#: how a group's copy is rotated before refinement (:func:`group_rotation`)
GROUP_ROTATIONS = ("users", "none")
#: what ``pocketrec compress --method peel`` needs beyond the core install
SKLEARN_HINT = "PEEL's user groups need scikit-learn: pip install 'pocketrec[peel]' (or scikit-learn)"


def peel_train() -> TrainConfig:
    """The refinement's schedule: small steps from the RULE blocks, early stopping on the group's validation."""
    return TrainConfig(batch_size=1024, epochs=20, patience=3, lr=5e-4, eval_batch_size=1024, metric="recall@20")


@dataclass
class PeelConfig(RecipeConfig):
    """``pocketrec compress --method peel --teacher RULE_RUN`` (module docstring). ``teacher`` is the RULE run
    PEEL refines (its LightGCN teacher, for the distillation term, is the one RULE recorded); ``budget`` is not
    used (every budget is served afterwards by ``pocketrec customize --group/--user``)."""

    budget: str = "1x"
    user_groups: int = 8
    rotation: str = "users"
    controller: bool = True
    controller_hidden: int = 16
    controller_lr: float = 1e-2
    held_out: float = 0.1
    loss_decay: float = 0.9
    truncated: bool = True
    soft_temperature: float = 0.5
    order_prior: float = 0.01
    kmeans_init: int = 10
    valid_users: int = 1000
    distill: CFDistillConfig = field(default_factory=CFDistillConfig)
    train: TrainConfig = field(default_factory=peel_train)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.user_groups < 1:
            raise ValueError(f"user_groups must be >= 1, got {self.user_groups}")
        if self.rotation not in GROUP_ROTATIONS:
            raise ValueError(f"rotation must be one of {', '.join(GROUP_ROTATIONS)}, got {self.rotation!r}")
        if not 0.0 < self.held_out < 1.0:
            raise ValueError(f"held_out must lie in (0, 1), got {self.held_out}")
        if not 0.0 <= self.loss_decay < 1.0:
            raise ValueError(f"loss_decay must lie in [0, 1), got {self.loss_decay}")
        if self.controller_hidden < 1 or self.controller_lr <= 0 or self.kmeans_init < 1 or self.valid_users < 1:
            raise ValueError("controller_hidden, kmeans_init and valid_users must be >= 1, controller_lr > 0")


# --------------------------------------------------------------------------------------------- user groups


def cluster_users(vectors: np.ndarray, groups: int, seed: int = 0, n_init: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """k-means of the user vectors ``(num_users + 1, D)`` (row 0 padding, ignored) into ``groups`` groups:
    ``(group of every row, -1 for row 0; centroids (groups, D))``. Fewer users than groups is an error."""
    try:
        from sklearn.cluster import KMeans
    except ImportError:
        from pocketrec.extras import MissingExtraError

        raise MissingExtraError(SKLEARN_HINT) from None
    users = np.asarray(vectors, dtype=np.float64)[1:]
    if len(users) < groups:
        raise ValueError(f"user_groups={groups} is more than the {len(users)} users")
    km = KMeans(n_clusters=groups, n_init=n_init, random_state=seed).fit(users)
    labels = np.concatenate([[-1], km.labels_.astype(np.int64)])
    return labels, km.cluster_centers_.astype(np.float32)


def nearest_group(vectors: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The group ``(B,)`` of each user vector ``(B, D)``: its nearest centroid (a user the clustering never saw)."""
    vectors = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    distances = ((vectors[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    return distances.argmin(axis=1).astype(np.int64)


def group_rotation(user_vectors: Tensor, kind: str = "users") -> Tensor:
    """The orthogonal ``(D, D)`` rotation of a group's copy: ``"users"``, the eigenvectors of the group's user
    vectors' second moment ``U_g^T U_g``, largest first, so that the leading blocks hold the directions the
    group's users weigh most (a group's first block then carries more of its scores than the shared basis's;
    scores of the full architecture are unchanged: ``u R (v R)^T = u v^T``); ``"none"``: the identity (RULE's
    shared basis). ``benchmarks/peel.py`` measures it (its ``no group rotation`` variant)."""
    dim = user_vectors.shape[1]
    if kind == "none" or len(user_vectors) == 0:
        return torch.eye(dim, dtype=user_vectors.dtype)
    moment = user_vectors.double().t() @ user_vectors.double()
    values, vectors = torch.linalg.eigh(moment)
    return vectors[:, torch.argsort(values, descending=True)].to(user_vectors.dtype)


# --------------------------------------------------------------------------------------------- block weights


def alpha_priority(alpha: np.ndarray, tie_order: np.ndarray) -> np.ndarray:
    """The block priority (flat ``g * N + k``, highest first) of the weights ``alpha (G, N)``: largest first,
    ties in ``tie_order`` (a priority too: RULE's, :func:`~pocketrec.methods.customize.block_priority`), so that
    uniform weights give RULE's order."""
    rank = np.empty(alpha.size, dtype=np.int64)
    rank[np.asarray(tie_order)] = np.arange(alpha.size)
    return np.lexsort((rank, -np.asarray(alpha, dtype=np.float64).ravel())).astype(np.int64)


def fraction_masks(priority: np.ndarray, group_sizes: np.ndarray, num_blocks: int, block_width: int,
                   fractions: tuple[float, ...] | list[float]) -> list[np.ndarray]:
    """The architectures ``priority`` gives ``fractions`` of the full float32 table (one block per item group
    at least: a fraction below that gets the smallest architecture)."""
    sizes = np.asarray(group_sizes)
    full = elastic_nbytes(sizes, np.ones((len(sizes), num_blocks), dtype=bool), block_width, "float32")
    one = np.zeros((len(sizes), num_blocks), dtype=bool)
    one[:, 0] = True  # one block per item group (all blocks of a group cost the same)
    smallest = elastic_nbytes(sizes, one, block_width, "float32")
    return [select_by_priority(priority, sizes, block_width, "float32", max(int(f * full), smallest),
                               with_priority=False) for f in fractions]


def soft_keep(alpha: Tensor, count: int, temperature: float) -> Tensor:
    """A differentiable stand-in ``(G, N)`` for "keep the ``count`` pairs of largest ``alpha``":
    ``sigmoid((log alpha - tau) / t)``, ``tau`` halfway between the ``count``-th and the next largest ``log
    alpha`` and ``t = temperature`` times their spread (both held fixed): the controller's view of a budget."""
    logits = torch.log(alpha.clamp_min(1e-12)).reshape(-1)
    ordered = torch.sort(logits.detach(), descending=True).values
    count = int(min(max(count, 1), len(ordered)))
    tau = ordered[count - 1] if count == len(ordered) else 0.5 * (ordered[count - 1] + ordered[count])
    scale = temperature * ordered.std().clamp_min(1e-6)
    return torch.sigmoid((logits - tau) / scale).reshape(alpha.shape)


class BlockController(nn.Module):
    """``alpha (G, N)``: a softmax over each item group's ``N`` blocks, from its features ``(G, 2)`` (popularity,
    recent loss) through one hidden layer, plus a fixed prior ``-order_prior * k / N`` on block ``k``.

    The last layer starts at zero, so ``alpha`` starts next to uniform and, with the prior, explicitly in RULE's
    order (the blocks by index, then the item groups by popularity), the order the selection follows (ties in
    ``alpha`` fall back to it anyway: ``benchmarks/peel.py``'s ``no order prior`` variant measured no
    difference on ml-100k)."""

    def __init__(self, num_blocks: int, hidden: int = 16, order_prior: float = 0.01) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, num_blocks))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)
        self.register_buffer("prior", -order_prior * torch.arange(num_blocks, dtype=torch.float32) / num_blocks)

    def forward(self, features: Tensor) -> Tensor:
        return torch.softmax(self.prior + self.net(features), dim=-1)


def _standardised(x: Tensor) -> Tensor:
    return (x - x.mean()) / x.std().clamp_min(1e-6) if x.numel() > 1 else torch.zeros_like(x)


class GroupRefiner(nn.Module):
    """One user group's elastic blocks (a trained copy: parameter ``blocks (R, N, b)``) and its controller;
    buffers: the items' groups, the (frozen) user vectors, the item groups' popularity feature and the
    running mean of their training loss."""

    def __init__(self, blocks: Tensor, groups: Tensor, users: Tensor, popularity: np.ndarray, hidden: int = 16,
                 loss_decay: float = 0.9, order_prior: float = 0.01) -> None:
        super().__init__()
        self.blocks = nn.Parameter(blocks.detach().clone().float())
        self.num_blocks, self.block_width = int(blocks.shape[1]), int(blocks.shape[2])
        self.num_groups = len(popularity)
        self.loss_decay = loss_decay
        self.register_buffer("groups", groups.detach().clone().long())
        self.register_buffer("users", users.detach().clone().float())
        self.register_buffer("popularity", _standardised(torch.log1p(torch.as_tensor(popularity).float())))
        self.register_buffer("recent_loss", torch.zeros(self.num_groups))
        self.controller = BlockController(self.num_blocks, hidden, order_prior)

    def alpha(self) -> Tensor:
        """The controller's ``alpha (G, N)`` for the current features."""
        return self.controller(torch.stack([self.popularity, _standardised(self.recent_loss)], dim=1))

    def rows(self, ids: Tensor | None, keep: Tensor | None = None, detach: bool = False) -> Tensor:
        """The rows ``(R, D)`` of ``ids`` (all rows when ``None``): the raw blocks, each (item group, block)
        times ``keep (G, N)`` (a 0/1 architecture, or the controller's soft one; ``None``: all blocks)."""
        blocks = self.blocks.detach() if detach else self.blocks
        groups = self.groups
        if ids is not None:
            blocks, groups = blocks[ids], groups[ids]
        if keep is None:
            return blocks.reshape(len(blocks), self.num_blocks * self.block_width)
        return effective_rows(blocks, groups, keep, "aligned")

    def note_loss(self, items: Tensor, losses: Tensor) -> None:
        """Fold the per-positive losses of a batch into each item group's running mean (the controller's input)."""
        with torch.no_grad():
            groups = self.groups[items]
            total = torch.zeros(self.num_groups).index_add_(0, groups, losses.detach().float())
            count = torch.zeros(self.num_groups).index_add_(0, groups, torch.ones_like(losses).float())
            seen = count > 0
            mean = total[seen] / count[seen]
            self.recent_loss[seen] = self.loss_decay * self.recent_loss[seen] + (1 - self.loss_decay) * mean


# --------------------------------------------------------------------------------------------- refinement


@dataclass
class GroupData:
    """One user group's share of the data: its users, its training interactions cut into the blocks' part and
    the controller's held-out part, and its item groups' popularity."""

    group: int
    users: np.ndarray
    train: sparse.csr_matrix
    held_out: sparse.csr_matrix
    popularity: np.ndarray


def group_popularity(train: sparse.csr_matrix, users: np.ndarray, item_groups: np.ndarray,
                     num_item_groups: int) -> np.ndarray:
    """Each item group's training interactions ``(G,)`` among ``users``: the controller's popularity input and
    the key of the tie order (:func:`rule_order`)."""
    return np.bincount(item_groups[keep_rows(train, users).indices], minlength=num_item_groups).astype(np.float64)


def rule_order(popularity: np.ndarray, num_blocks: int) -> np.ndarray:
    """RULE's block priority for a user group whose item groups have ``popularity``: block index first, then
    the item groups from most to least popular (where :func:`alpha_priority` breaks ties)."""
    from pocketrec.methods.customize import block_priority

    return block_priority(np.ones((len(popularity), num_blocks), dtype=bool), popularity)


def group_data(dataset: Any, labels: np.ndarray, group: int, item_groups: np.ndarray, num_item_groups: int,
               held_out: float, seed: int) -> GroupData:
    """The training interactions of the users of ``group``, each in the held-out part with probability
    ``held_out`` (seeded), and the item groups' popularity among those users."""
    users = np.flatnonzero(labels == group)
    mine = keep_rows(dataset.train, users)
    coo = mine.tocoo()
    held = np.random.default_rng(seed * 7919 + group).random(coo.nnz) < held_out
    parts = [sparse.csr_matrix((coo.data[m], (coo.row[m], coo.col[m])), shape=mine.shape) for m in (~held, held)]
    return GroupData(group, users, parts[0], parts[1],
                     group_popularity(dataset.train, users, item_groups, num_item_groups))


def _cycle(batches: BPRBatches, seed: int) -> Iterator[Tensor]:
    epoch = 0
    while True:
        yield from batches.batches(seed + epoch)
        epoch += 1


@dataclass
class GroupResult:
    """What one group's refinement reached: its users, the validation measure before and after, whether the
    refined blocks were kept, alpha, the fit record and its cost."""

    group: int
    users: int
    interactions: int
    valid_before: float
    valid_after: float
    refined: bool
    seconds: float
    epochs: int
    alpha: np.ndarray
    fit: FitResult | None = None

    def summary(self) -> dict[str, Any]:
        return {"group": self.group, "users": self.users, "interactions": self.interactions,
                "valid_before": round(self.valid_before, 6), "valid_after": round(self.valid_after, 6),
                "refined": self.refined, "seconds": round(self.seconds, 3), "epochs": self.epochs,
                "alpha_max": round(float(self.alpha.max()), 4), "alpha_min": round(float(self.alpha.min()), 4)}


class GroupValidator:
    """The selection measure of a group's refinement (module docstring): mean validation Recall@20 (and
    NDCG@20) of the group's users over the architectures of :data:`VALID_FRACTIONS` under the current alpha."""

    def __init__(self, refiner: GroupRefiner, dataset: Any, users: np.ndarray, tie_order: np.ndarray,
                 group_sizes: np.ndarray, max_users: int, seed: int) -> None:
        truth = dataset.matrix("valid").tocsr()
        users = sample_users(truth, max_users, seed, users)
        self.truth = keep_rows(truth, users)
        self.exclude = dataset.seen("valid")
        self.users = users
        self.refiner, self.tie_order, self.group_sizes = refiner, tie_order, group_sizes

    def __call__(self) -> dict[str, float]:
        refiner = self.refiner
        if not len(self.users):
            return {"recall@20": 0.0, "ndcg@20": 0.0}
        with torch.no_grad():
            alpha = refiner.alpha()
            priority = alpha_priority(alpha.numpy(), self.tie_order)
            results = []
            for mask in fraction_masks(priority, self.group_sizes, refiner.num_blocks, refiner.block_width,
                                       VALID_FRACTIONS):
                rows = refiner.rows(None, torch.from_numpy(mask))

                def score(ids: Tensor, rows: Tensor = rows) -> Tensor:
                    return mask_padding_column(refiner.users[ids] @ rows.t())

                results.append(evaluate_cf(score, self.truth, self.exclude, ks=(20,)))
        return {key: float(np.mean([r[key] for r in results])) for key in ("recall@20", "ndcg@20")}


def refine_group(refiner: GroupRefiner, data: GroupData, validate: GroupValidator, teacher: UserVectorModel | None,
                 cfg: PeelConfig, tie_order: np.ndarray, log: Callable[[str], None]) -> GroupResult:
    """Refine one group's blocks and controller (bi-level, module docstring); keeps the best epoch, or the
    starting blocks when no epoch beats them."""
    start = time.perf_counter()
    num_items = refiner.blocks.shape[0] - 1
    kd_cap = kd_user_cap(cfg.distill, num_items)
    temperature = cfg.distill.temperature
    use_kd = teacher is not None and cfg.distill.kd != "none" and cfg.distill.kd_weight > 0
    sizes = np.bincount(refiner.groups[1:].numpy(), minlength=refiner.num_groups)
    generator = np.random.default_rng(cfg.train.seed * 31 + data.group)

    def random_mask(alpha: Tensor) -> np.ndarray:
        """The architecture of a random budget (log-uniform fraction of the full table) under ``alpha``."""
        priority = alpha_priority(alpha.detach().numpy(), tie_order)
        fraction = float(np.exp(generator.uniform(np.log(1 / refiner.num_blocks), 0.0)))
        return fraction_masks(priority, sizes, refiner.num_blocks, refiner.block_width, [fraction])[0]

    def batch_loss(batch: Tensor, keeps: list[Tensor | None], detach: bool, note: bool
                   ) -> tuple[Tensor, dict[str, float]]:
        """BPR (+ KD) of ``batch`` under each architecture of ``keeps``, summed."""
        users = refiner.users[batch[:, 0]]
        total, parts = torch.zeros(()), {}
        for which, keep in enumerate(keeps):
            positives = refiner.rows(batch[:, 1], keep, detach)
            negatives = refiner.rows(batch[:, 2], keep, detach)
            losses = nn.functional.softplus((users * negatives).sum(-1) - (users * positives).sum(-1))
            if note and which == 0:
                refiner.note_loss(batch[:, 1], losses)
            loss = losses.mean()
            parts[f"bpr{which}"] = float(loss.detach())
            if use_kd:
                ids = kd_users_of(batch, kd_cap)
                with torch.no_grad():
                    target = teacher.score_users(ids)[:, 1:].float() / temperature
                scores = (refiner.users[ids] @ refiner.rows(None, keep, detach)[1:].t()) / temperature
                kd = cfg.distill.kd_weight * temperature**2 * softmax_kl(target, scores)
                loss = loss + kd
                parts[f"kd{which}"] = float(kd.detach())
            total = total + loss
        return total, parts

    def train_loss(batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        """The blocks' step: the full architecture and, with ``truncated``, a random budget's under alpha."""
        keeps: list[Tensor | None] = [None]
        if cfg.truncated:
            with torch.no_grad():
                keeps.append(torch.from_numpy(random_mask(refiner.alpha())))
        return batch_loss(batch, keeps, detach=False, note=True)

    optimizer = torch.optim.Adam(refiner.controller.parameters(), lr=cfg.controller_lr)
    batch_size = cfg.train.batch_size
    held = _cycle(BPRBatches(data.held_out, batch_size), cfg.train.seed) if data.held_out.nnz else None

    def controller_step(step: int) -> None:
        """The controller's step: a held-out batch under the soft architecture of a random budget."""
        if held is None or not cfg.controller:
            return
        alpha = refiner.alpha()
        keep = soft_keep(alpha, int(random_mask(alpha).sum()), cfg.soft_temperature)
        loss, _ = batch_loss(next(held), [keep], detach=True, note=False)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    before = validate()["recall@20"]
    initial = {k: v.clone() for k, v in refiner.state_dict().items()}
    if data.train.nnz == 0:
        return GroupResult(data.group, len(data.users), 0, before, before, False, time.perf_counter() - start, 0,
                           refiner.alpha().detach().numpy())
    result = fit(refiner, BPRBatches(data.train, batch_size), train_loss, validate, cfg.train,
                 parameters=[{"params": [refiner.blocks]}], on_step=controller_step, log=log)
    after = float(result.best_valid.get("recall@20", before))
    refined = after > before
    if not refined:
        refiner.load_state_dict(initial)
    with torch.no_grad():
        alpha = refiner.alpha().numpy()
    return GroupResult(data.group, len(data.users), int(data.train.nnz + data.held_out.nnz), before,
                       max(before, after), refined, time.perf_counter() - start, len(result.history), alpha, result)


# --------------------------------------------------------------------------------------------- the recipe


def load_rule_run(path: str | Path) -> tuple[UserVectorModel, dict[str, Any], Path]:
    """The RULE model a PEEL run refines: ``(model, meta, checkpoint folder)`` (``ValueError`` for another
    method's checkpoint)."""
    from pocketrec.methods.customize import run_folder_of
    from pocketrec.train.checkpoint import load_checkpoint, read_meta

    best, _ = run_folder_of(path)
    meta = read_meta(best)
    if meta.get("method") != "rule":
        raise ValueError(f"{best} is a {meta.get('method') or 'teacher'!r} checkpoint: PEEL refines a RULE run "
                         "(--teacher runs/rule-DATASET from `pocketrec compress --method rule`)")
    model, meta = load_checkpoint(best)
    if not isinstance(model.table, ElasticTable) or model.table.scoring != "aligned":
        raise ValueError(f"{best}: PEEL needs a RULE model with the aligned scoring (the default)")
    return model, meta, best


def compress_peel(cfg: PeelConfig, dataset: Any) -> tuple[UserVectorModel, CompressResult]:
    """``peel`` (the registry's runner): cluster the users, refine every group, save ``peel.safetensors`` and
    the base model's checkpoint (``best/``, method ``peel``) under ``cfg.out``."""
    from pocketrec.train import distributed
    from pocketrec.train.checkpoint import save_checkpoint
    from pocketrec.train.compat import check_compatible

    if not cfg.teacher:
        raise ValueError("no RULE run given (--teacher runs/rule-DATASET, from `pocketrec compress --method rule`)")
    if distributed.is_distributed():
        raise ValueError("PEEL's refinement runs in one process (its groups are small): drop --nproc")
    base, meta, best = load_rule_run(cfg.teacher)
    check_compatible(meta, dataset, what=f"RULE run {best}")
    base.attach(dataset)
    teacher = None
    if cfg.distill.kd != "none" and cfg.distill.kd_weight > 0:
        teacher = load_cf_teacher(meta["teacher"], dataset, "peel").device
    table: ElasticTable = base.table
    seed_everything(cfg.train.seed)
    users = base.user_vectors.detach()
    labels, centroids = cluster_users(users.numpy(), cfg.user_groups, cfg.train.seed, cfg.kmeans_init)
    item_groups = table.groups.cpu().numpy()
    sizes = table.group_sizes()
    log = (lambda m: print(m, flush=True)) if cfg.train.progress else (lambda m: None)
    peak_before = _peak_rss()
    results, blocks, rotations = [], [], []
    for g in range(cfg.user_groups):
        data = group_data(dataset, labels, g, item_groups, table.num_groups, cfg.held_out, cfg.train.seed)
        tie = rule_order(data.popularity, table.num_blocks)
        rotation = group_rotation(users[data.users], cfg.rotation)
        rows = table.blocks.detach().reshape(table.num_rows, table.dim) @ rotation
        refiner = GroupRefiner(rows.reshape(table.blocks.shape), table.groups, users @ rotation, data.popularity,
                               cfg.controller_hidden, cfg.loss_decay, cfg.order_prior)
        validate = GroupValidator(refiner, dataset, data.users, tie, sizes, cfg.valid_users, cfg.train.seed)
        log(f"user group {g + 1}/{cfg.user_groups}: {len(data.users)} users, {data.train.nnz:,} + "
            f"{data.held_out.nnz:,} held-out interactions")
        result = refine_group(refiner, data, validate, teacher, cfg, tie, log)
        log(f"user group {g + 1}: valid R@20 (mean over budgets) {100 * result.valid_before:.2f} -> "
            f"{100 * result.valid_after:.2f} in {result.seconds:.1f} s" + ("" if result.refined else " (kept RULE's)"))
        results.append(result)
        blocks.append(refiner.blocks.detach().clone())
        rotations.append(rotation)
    peel = {"config": _peel_meta(cfg), "groups": [r.summary() for r in results],
            "refine_seconds": round(sum(r.seconds for r in results), 3),
            "peak_rss_bytes": _peak_rss(), "peak_rss_before_bytes": peak_before, "base": str(best)}
    state = PeelState(labels, centroids, torch.stack(blocks), torch.from_numpy(np.stack([r.alpha for r in results])),
                      torch.stack(rotations))
    model = state.model(base, None)
    test = state.evaluate(base, dataset, "test")
    out_meta = {**{k: v for k, v in meta.items() if k not in ("epoch", "valid", "test", "history")},
                "method": "peel", "peel": peel, "test": test, "valid": state.evaluate(base, dataset, "valid"),
                "distill": to_dict(cfg.distill)}
    if cfg.out:
        out = Path(cfg.out)
        save_checkpoint(out / "best", base, out_meta)
        state.save(out / PEEL_FILE, peel)
    return model, CompressResult(fit=None, test=test, table_bytes=table.nbytes(),
                                 dense_table_bytes=int(meta["dense_table_bytes"]), meta=out_meta)


def _peel_meta(cfg: PeelConfig) -> dict[str, Any]:
    keys = ("user_groups", "rotation", "controller", "controller_hidden", "controller_lr", "held_out", "loss_decay",
            "truncated", "soft_temperature", "order_prior", "kmeans_init", "valid_users")
    return {**{key: getattr(cfg, key) for key in keys}, "train": to_dict(cfg.train)}


def _peak_rss() -> int:
    """This process's peak resident memory in bytes (Linux reports kilobytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@dataclass
class PeelState:
    """What a PEEL run adds to its RULE model: every user's group (``-1`` for row 0), the centroids, and each
    group's refined blocks ``(Gu, R, N, b)``, alpha ``(Gu, G, N)`` and rotation ``(Gu, D, D)`` (the group's
    blocks are in its rotated basis; its users' vectors are rotated by it when its model is built)."""

    labels: np.ndarray
    centroids: np.ndarray
    blocks: Tensor
    alpha: Tensor
    rotations: Tensor

    @property
    def num_user_groups(self) -> int:
        return len(self.centroids)

    def group_table(self, base: ElasticTable, group: int) -> ElasticTable:
        """Group ``group``'s elastic table: the base table's layout with the group's refined blocks."""
        table = ElasticTable.from_rows(torch.zeros(base.num_rows, base.dim), base.num_blocks, base.groups,
                                       base.num_groups, scoring=base.scoring, dtype=base.stored_dtype)
        with torch.no_grad():
            table.blocks.copy_(self.blocks[group])
            table.set_architecture(base.architecture())
        return table

    def model(self, base: UserVectorModel, group: int | None) -> UserVectorModel:
        """Group ``group``'s device model (``None``: group 0's shape, for a result's ``model``)."""
        table = self.group_table(base.table, 0 if group is None else group)
        rotation = self.rotations[0 if group is None else group]
        model = UserVectorModel(base.num_users, table, dataclasses.replace(base.config, train_users=False),
                                user_vectors=base.user_vectors.detach() @ rotation)
        if base._attached is not None:
            model.attach(base._attached)
        return model.eval()

    def score_users(self, base: UserVectorModel, choices: dict[int, tuple[np.ndarray, str]] | None = None
                    ) -> Callable[[Tensor], Tensor]:
        """``score_users(ids)`` where each user is scored by its group's table: the full architecture, or
        ``choices[group] = (mask, stored dtype)``, what each group's devices hold."""
        rows = {}
        with torch.no_grad():
            for g in range(self.num_user_groups):
                table = self.group_table(base.table, g)
                if choices is not None:
                    table.set_architecture(choices[g][0])
                    table.stored_dtype = choices[g][1]
                rows[g] = table.effective() @ self.rotations[g].t()  # back to the users' shared basis
        labels = torch.from_numpy(self.labels)
        vectors = base.user_vectors.detach()

        def score(ids: Tensor) -> Tensor:
            out = torch.empty(len(ids), base.num_items + 1)
            groups = labels[ids]
            for g, r in rows.items():
                at = torch.nonzero(groups == g).flatten()
                if len(at):
                    out[at] = vectors[ids[at]] @ r.t()
            return mask_padding_column(out)

        return score

    def evaluate(self, base: UserVectorModel, dataset: Any, split: str,
                 choices: dict[int, tuple[np.ndarray, str]] | None = None, truth: Any = None) -> dict[str, float]:
        """Every CF metric on ``split`` (or of ``truth``, a subset of its users), each user scored by its
        group's table (full architecture, or ``choices``: :meth:`score_users`)."""
        truth = dataset.matrix(split) if truth is None else truth
        with torch.no_grad():
            return evaluate_cf(self.score_users(base, choices), truth, dataset.seen(split))

    def save(self, path: Path, report: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        from pocketrec.device.np_resize import write_atomically

        tensors = {"labels": torch.from_numpy(self.labels), "centroids": torch.from_numpy(self.centroids),
                   "blocks": self.blocks.contiguous(), "alpha": self.alpha.float().contiguous(),
                   "rotations": self.rotations.float().contiguous()}
        write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata={"report": json.dumps(report)}))

    @classmethod
    def load(cls, path: Path) -> tuple[PeelState, dict[str, Any]]:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            report = json.loads((f.metadata() or {}).get("report", "{}"))
            t = {k: f.get_tensor(k) for k in f.keys()}
        return cls(t["labels"].numpy(), t["centroids"].numpy(), t["blocks"], t["alpha"], t["rotations"]), report
