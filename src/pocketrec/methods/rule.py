"""RULE (Chen et al., KDD 2021): one elastic model trained once, a device model for any budget in a second.

The recipe (``pocketrec compress --method rule``), from a collaborative-filtering teacher (LightGCN):

1. the student is the teacher's device form (:mod:`pocketrec.methods.cf_compress`) with an
   :class:`~pocketrec.tables.elastic.ElasticTable` in place of its dense table: the propagated item
   vectors cut into ``num_blocks`` blocks, the items cut into ``num_groups`` groups by training popularity;
2. it is trained **once**, on BPR plus distillation from the teacher (:class:`CFDistillConfig`), with

   * ``subsets="sampled"`` (pocketrec's, default): every step also scores the batch with a random
     sub-architecture (each group a random non-empty subset of blocks), so that every subset is trained to
     rank well; ``"full"``: the full architecture only (the authors' code);
   * ``diversity``: the weight of a *bounded* diversity regulariser, the mean pairwise cosine similarity
     of a batch's positive items' blocks (in [-1/(N-1), 1]); the authors' ``-|E_k - E_{k+1}|^2`` is unbounded
     below and was commented out of their code;

3. the search's performance estimator (:class:`~pocketrec.search.estimator.ArchitectureEstimator`) is fitted
   to ``label_archs`` random architectures labelled with their **validation** Recall@20 over up to
   ``label_users`` validation users (the test users are never seen by the search), and saved next to the
   checkpoint (``estimator.safetensors``) with its cost and its Kendall tau on held-out architectures.

Then :func:`customize` (``pocketrec customize``) turns the checkpoint into a device artifact for a budget:
aging evolution over architectures scored by the estimator, the best few re-evaluated on validation, the
chosen architecture's blocks exported. No retraining.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pocketrec.backbones.user_vectors import UserVectorConfig, UserVectorModel
from pocketrec.config import to_dict
from pocketrec.eval.cf_metrics import evaluate_cf, keep_rows, sample_users
from pocketrec.methods.cf_compress import CFDistillConfig, cf_distillation_loss, cf_student_train, load_cf_teacher
from pocketrec.methods.recipe import CompressResult, RecipeConfig
from pocketrec.search.architectures import ArchitectureSpace, PrefixSpace
from pocketrec.search.estimator import (
    DEFAULT_ESTIMATOR,
    ESTIMATORS,
    Estimator,
    estimator_from_state,
    kendall_tau,
    make_estimator,
)
from pocketrec.tables.base import mask_padding_column
from pocketrec.tables.elastic import ElasticTable
from pocketrec.tables.elastic_core import GROUPINGS, check_scoring, effective_rows, item_groups, random_architecture
from pocketrec.train.distributed import global_mean
from pocketrec.train.run import dataset_meta, run_training
from pocketrec.train.trainer import TrainConfig, seed_everything

SUBSETS = ("sampled", "full")
#: the architectures searched: each group's first k blocks (pocketrec's) or any subset of blocks (RULE's)
SPACES = ("prefix", "subset")
#: how the teacher's vectors are turned before they are cut into blocks (:func:`principal_rotation`)
ROTATIONS = ("svd", "none")
#: the file next to a RULE checkpoint's ``best/`` that holds the fitted estimator
ESTIMATOR_FILE = "estimator.safetensors"
#: the metric the estimator learns and the search verifies (validation split)
SEARCH_METRIC = "recall@20"


@dataclass
class RuleConfig(RecipeConfig):
    """``pocketrec compress --method rule`` (module docstring). ``budget`` is not used: the trained model is the
    full one, and :func:`customize` fits it to budgets afterwards."""

    budget: str = "1x"
    num_blocks: int = 16
    num_groups: int = 20
    grouping: str = "popularity"
    scoring: str = "aligned"
    rotation: str = "svd"
    space: str = "prefix"
    subsets: str = "sampled"
    diversity: float = 0.0
    train_users: bool = False
    label_archs: int = 300
    label_users: int = 1000
    estimator: str = DEFAULT_ESTIMATOR
    estimator_epochs: int = 300
    distill: CFDistillConfig = field(default_factory=CFDistillConfig)
    train: TrainConfig = field(default_factory=cf_student_train)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_scoring(self.scoring)
        if self.grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}, got {self.grouping!r}")
        if self.rotation not in ROTATIONS:
            raise ValueError(f"rotation must be one of {', '.join(ROTATIONS)}, got {self.rotation!r}")
        if self.space not in SPACES:
            raise ValueError(f"space must be one of {', '.join(SPACES)}, got {self.space!r}")
        if self.subsets not in SUBSETS:
            raise ValueError(f"subsets must be one of {', '.join(SUBSETS)}, got {self.subsets!r}")
        if self.num_blocks < 1 or self.num_groups < 1:
            raise ValueError("num_blocks and num_groups must be >= 1")
        if not self.diversity >= 0:
            raise ValueError(f"diversity must be >= 0, got {self.diversity}")
        if self.label_archs < 10 or self.label_users < 1 or self.estimator_epochs < 1:
            raise ValueError("label_archs must be >= 10, label_users and estimator_epochs >= 1")


# --------------------------------------------------------------------------------------------- training


def principal_rotation(rows: Tensor) -> Tensor:
    """The orthogonal ``(D, D)`` matrix of the right singular vectors of ``rows (n, D)``, largest first.

    Turning both the item rows and the user vectors by it changes no score (``u R (v R)^T = u v^T``), but
    puts the directions the items vary most along into the first blocks, so that keeping a group's first
    ``k`` blocks of the aligned scoring is its best rank-``k b`` approximation rather than ``k`` arbitrary
    slices of the vector. pocketrec's choice (``rotation="svd"``, default); ``"none"`` keeps the
    teacher's coordinates.
    """
    _, _, vh = torch.linalg.svd(rows.double(), full_matrices=False)
    return vh.t().to(rows.dtype)


def diversity_term(table: ElasticTable, items: Tensor) -> Tensor:
    """Mean pairwise cosine similarity of the blocks of ``items`` (bounded: in ``[-1/(N-1), 1]``)."""
    blocks = table.blocks[items.to(table.blocks.device)]  # (B, N, b)
    unit = torch.nn.functional.normalize(blocks, dim=-1)
    gram = unit @ unit.transpose(1, 2)  # (B, N, N)
    n = gram.shape[-1]
    if n < 2:
        return gram.new_zeros(())
    return (gram.sum(dim=(1, 2)) - gram.diagonal(dim1=1, dim2=2).sum(dim=1)).mean() / (n * (n - 1))


def rule_loss(student: UserVectorModel, teacher: UserVectorModel, cfg: RuleConfig, seen: Any
              ) -> Callable[[Tensor], tuple[Tensor, dict[str, float]]]:
    """The training loss: the CF students' (BPR + KD) on the full architecture, plus the same on a random
    sub-architecture with ``subsets="sampled"``, plus ``diversity`` times :func:`diversity_term`.

    The sub-architecture of step ``t`` is drawn from a generator seeded with ``(seed, t)``, so every process
    of a data-parallel run draws the same one.
    """
    base = cf_distillation_loss(student, teacher, cfg.distill, seen=seen)
    table = student.table
    step = [0]

    def loss_fn(batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        loss, parts = base(batch)
        if cfg.subsets == "sampled":
            generator = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step[0])
            mask = random_architecture(table.num_groups, table.num_blocks, generator, prefix=cfg.space == "prefix")
            with table.using(mask):
                sub, sub_parts = base(batch)
            loss = loss + sub
            parts = {**parts, "sub": float(sub.detach())}
        step[0] += 1
        if cfg.diversity > 0:
            div = cfg.diversity * global_mean(diversity_term(table, batch[:, 1]), len(batch))  # exact across ranks
            loss = loss + div
            parts = {**parts, "div": float(div.detach())}
        return loss, parts

    return loss_fn


def compress_rule(cfg: RuleConfig, dataset: Any) -> tuple[UserVectorModel, CompressResult]:
    """``rule`` (the registry's runner): train the elastic model once, then fit the search's estimator."""
    if not cfg.teacher:
        raise ValueError("no teacher checkpoint given (--teacher runs/teacher-DATASET/best, a lightgcn checkpoint)")
    teacher = load_cf_teacher(cfg.teacher, dataset, "rule")
    dim = teacher.device.config.dim
    if dim % cfg.num_blocks:
        raise ValueError(f"num_blocks={cfg.num_blocks} does not divide the teacher's vector width {dim}")
    num_groups = min(cfg.num_groups, dataset.num_items)
    counts = np.asarray(dataset.train.sum(axis=0)).ravel()
    groups = item_groups(counts, num_groups, cfg.grouping)
    seed_everything(cfg.train.seed)
    rows = teacher.device.table.all_rows().detach()
    users = teacher.device.user_vectors.detach()
    if cfg.rotation == "svd":
        rotation = principal_rotation(rows[1:])
        rows, users = rows @ rotation, users @ rotation
    table = ElasticTable.from_rows(rows, cfg.num_blocks, groups, num_groups, scoring=cfg.scoring, dtype=cfg.dtype)
    student = UserVectorModel(teacher.device.num_users, table,
                              UserVectorConfig(dim=dim, train_users=cfg.train_users), user_vectors=users)
    student.attach(dataset)
    meta = {**dataset_meta(dataset), "method": "rule", "teacher": str(teacher.path),
            "teacher_backbone": teacher.model.backbone, "teacher_test": teacher.meta.get("test"),
            "table_bytes": table.nbytes(), "dense_table_bytes": teacher.dense_bytes,
            "ratio": teacher.dense_bytes / table.nbytes(), "rule": _rule_meta(cfg), "distill": to_dict(cfg.distill)}
    loss = rule_loss(student, teacher.device, cfg, dataset.train)
    fit = run_training(student, dataset, cfg.train, cfg.out or None, loss, meta)
    student.eval()
    report = fit_estimator(student, dataset, cfg.label_archs, cfg.label_users, cfg.estimator, cfg.estimator_epochs,
                           cfg.train.seed, prefix=cfg.space == "prefix", progress=cfg.train.progress)
    if cfg.out:
        save_estimator(Path(cfg.out) / ESTIMATOR_FILE, report)
    meta = {**meta, "estimator": report.summary()}
    return student, CompressResult(fit=fit, test=fit.history[-1]["test"], table_bytes=table.nbytes(),
                                   dense_table_bytes=teacher.dense_bytes, meta=meta)


def _rule_meta(cfg: RuleConfig) -> dict[str, Any]:
    keys = ("num_blocks", "num_groups", "grouping", "scoring", "rotation", "space", "subsets", "diversity",
            "train_users", "label_archs", "label_users", "estimator", "estimator_epochs")
    return {key: getattr(cfg, key) for key in keys}


# --------------------------------------------------------------------------------------------- evaluation


class ArchitectureEvaluator:
    """The true search metric of an architecture: validation Recall@20 of the elastic model with that
    architecture, over a fixed sample of at most ``max_users`` validation users (``seed``); ``users``
    (internal ids) restricts the sample to them (a PEEL user group)."""

    def __init__(self, model: UserVectorModel, dataset: Any, split: str = "valid", max_users: int = 1000,
                 seed: int = 0, users: np.ndarray | None = None) -> None:
        if not isinstance(model.table, ElasticTable):
            raise ValueError(f"the model's item table is {model.table.kind!r}, not an elastic table (a RULE "
                             "checkpoint from `pocketrec compress --method rule`)")
        model.attach(dataset)
        model.eval()
        self.model = model
        truth = dataset.matrix(split).tocsr()
        chosen = sample_users(truth, max_users, seed, users)
        if not len(chosen):
            raise ValueError(f"no user has {split} interactions" if users is None else
                             f"none of the {len(users)} given users has {split} interactions")
        users = chosen
        self.truth = keep_rows(truth, users)
        self.exclude = dataset.seen(split)
        self.num_users = len(users)
        self._stored: dict[str, Tensor] = {}  # stored precision -> every block rounded to it
        self.calls = 0
        self.seconds = 0.0

    def metrics(self, mask: np.ndarray | None = None) -> dict[str, float]:
        """All CF metrics of ``mask`` (``None``: the table's current architecture) at the table's stored
        precision.

        Fast path for a search that evaluates hundreds of architectures: the blocks at each precision are
        rounded once (an int8 block's scale depends on its group's items, not on the architecture), and an
        architecture is then one mask of them and one product with the users' vectors.
        """
        start = time.perf_counter()
        table = self.model.table
        chosen = torch.from_numpy(np.asarray(table.architecture() if mask is None else mask, dtype=bool))
        key = table.stored_dtype
        if key not in self._stored:
            with torch.no_grad():
                self._stored[key] = table.stored_blocks().detach()
        with torch.no_grad():
            rows = effective_rows(self._stored[key], table.groups, chosen.to(table.groups.device), table.scoring)
        users = self.model.user_vectors.detach()

        def score_users(ids: Tensor) -> Tensor:
            return mask_padding_column(users[ids.to(users.device)] @ rows.t())

        result = evaluate_cf(score_users, self.truth, self.exclude, ks=(20,))
        self.calls += 1
        self.seconds += time.perf_counter() - start
        return result

    def __call__(self, mask: np.ndarray) -> float:
        return float(self.metrics(mask)[SEARCH_METRIC])


def architecture_space(table: ElasticTable, dtype: str | None = None, prefix: bool = False,
                       with_priority: bool = False) -> ArchitectureSpace:
    """The search space of ``table`` stored at ``dtype`` (default: its own): group sizes, bytes per item block,
    and the fixed bytes (group ids, mask, scales), so that ``space.cost(mask)`` is the exported table's
    ``nbytes()``. ``prefix``: the :class:`~pocketrec.search.architectures.PrefixSpace` (each group its first
    blocks); ``with_priority``: the table also stores its block priority (a resizable device file)."""
    dtype = dtype or table.stored_dtype
    sizes = table.group_sizes()
    full = np.ones((table.num_groups, table.num_blocks), dtype=bool)
    block_bytes = table.block_width * np.dtype(dtype).itemsize
    overhead = 4 if dtype == "int8" else 0  # a kept int8 block's float32 scale
    per_block = int(sizes.sum()) * block_bytes + table.num_groups * overhead
    fixed = ElasticTable.bytes_for(sizes, full, table.block_width, dtype, with_priority) - table.num_blocks * per_block
    return PrefixSpace(sizes, table.num_blocks, int(block_bytes), int(fixed), overhead) if prefix else \
        ArchitectureSpace(sizes, table.num_blocks, int(block_bytes), int(fixed), overhead)


# --------------------------------------------------------------------------------------------- the estimator


@dataclass
class EstimatorReport:
    """A fitted estimator with what it cost: the labelled architectures, the labelling and fitting time, and
    the Kendall tau with the true metric on held-out architectures, over all sizes and within size bands
    (what a search at one budget needs: architectures that all fill it), for each estimator kind."""

    estimator: Estimator
    kind: str
    masks: np.ndarray
    labels: np.ndarray
    label_users: int
    label_seconds: float
    fit_seconds: float
    taus: dict[str, float]
    held_out: int

    def summary(self) -> dict[str, Any]:
        return {"estimator": self.kind, "archs": int(len(self.labels)), "label_users": self.label_users,
                "label_seconds": round(self.label_seconds, 3), "fit_seconds": round(self.fit_seconds, 3),
                "kendall_tau": round(self.taus[f"{self.kind}_all"], 4),
                **{f"tau_{k}": round(v, 4) for k, v in self.taus.items()}, "held_out": self.held_out,
                "metric": f"valid {SEARCH_METRIC}"}


def fit_estimator(model: UserVectorModel, dataset: Any, archs: int, users: int, kind: str = DEFAULT_ESTIMATOR,
                  epochs: int = 300, seed: int = 0, held_out: float = 0.2, prefix: bool = False,
                  progress: bool = False) -> EstimatorReport:
    """Label ``archs`` random architectures of ``model``'s elastic table with their validation Recall@20 (over
    ``users`` validation users); fit each estimator kind on ``1 - held_out`` of them and measure its Kendall
    tau on the rest (:func:`held_out_taus`); then refit ``kind`` on all of them (what the search uses)."""
    table = model.table
    evaluator = ArchitectureEvaluator(model, dataset, "valid", users, seed)
    space = architecture_space(table, prefix=prefix)
    rng = np.random.default_rng(seed)
    masks = np.stack(space.sample_for_labels(archs, rng))
    start = time.perf_counter()
    iterator = masks
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(masks, desc="label architectures", leave=False)
    labels = np.array([evaluator(mask) for mask in iterator])
    label_seconds = time.perf_counter() - start
    order = rng.permutation(len(masks))
    cut = max(1, int(round(len(masks) * held_out)))
    test, train = order[:cut], order[cut:]
    taus: dict[str, float] = {}
    for each in ESTIMATORS:
        probe = make_estimator(table.num_groups, table.num_blocks, each)
        probe.fit(masks[train], labels[train], seed=seed, **({"epochs": epochs} if each == "nfm" else {}))
        taus.update({f"{each}_{k}": v for k, v in held_out_taus(probe.predict(masks[test]), labels[test],
                                                               masks[test].sum(axis=(1, 2))).items()})
    start = time.perf_counter()
    estimator = make_estimator(table.num_groups, table.num_blocks, kind)
    estimator.fit(masks, labels, seed=seed, **({"epochs": epochs} if kind == "nfm" else {}))
    fit_seconds = time.perf_counter() - start
    return EstimatorReport(estimator, kind, masks, labels, evaluator.num_users, label_seconds, fit_seconds, taus,
                           len(test))


def held_out_taus(predicted: np.ndarray, true: np.ndarray, sizes: np.ndarray, bands: int = 4) -> dict[str, float]:
    """Kendall tau over all the architectures (``all``), and the mean tau within ``bands`` bands of equal
    count by number of blocks (``same_size``)."""
    order = np.argsort(sizes, kind="stable")
    within = [kendall_tau(predicted[part], true[part]) for part in np.array_split(order, bands) if len(part) >= 5]
    within = [t for t in within if np.isfinite(t)]
    return {"all": float(kendall_tau(predicted, true)),
            "same_size": float(np.mean(within)) if within else float("nan")}


def save_estimator(path: Path, report: EstimatorReport) -> None:
    """The estimator's weights, its labelled architectures and its report, in one safetensors file."""
    from safetensors.numpy import save_file

    arrays, config = report.estimator.state()
    tensors = {f"estimator/{k}": np.array(v, order="C") for k, v in arrays.items()}  # keeps 0-d arrays 0-d
    tensors["labels/masks"] = report.masks.astype(np.uint8)
    tensors["labels/values"] = report.labels.astype(np.float64)
    save_file(tensors, str(path), metadata={"config": json.dumps(config), "report": json.dumps(report.summary())})


def load_estimator(path: Path) -> tuple[Estimator, dict[str, Any]]:
    """The estimator saved by :func:`save_estimator` and its report."""
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        metadata = f.metadata()
        arrays = {k.split("/", 1)[1]: f.get_tensor(k) for k in f.keys() if k.startswith("estimator/")}
    return estimator_from_state(arrays, json.loads(metadata["config"])), json.loads(metadata["report"])
