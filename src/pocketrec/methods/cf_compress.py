"""Compressed item tables for collaborative-filtering models: a CF teacher's final item vectors in a TT or
codebook table at a byte budget, fine-tuned against the full model.

A CF device stores its user's vector and the model's final item vectors (LightGCN's *propagated* ones) and
ranks by their dot product: the :mod:`user-vectors <pocketrec.backbones.user_vectors>` backbone. So the
table to compress is the dense table of those vectors, and the student is that device model with a smaller
table. The recipe (:func:`compress_cf`), every check running before anything is written:

1. load the teacher checkpoint (``lightgcn``, or any backbone whose device query is ``user-vectors``),
   refuse it if it was trained on other data, and take its device form
   (:meth:`LightGCN.to_user_vectors <pocketrec.backbones.lightgcn.LightGCN.to_user_vectors>`): the
   propagated user vectors and a dense table of the propagated item vectors, scoring as the teacher does;
2. turn the budget (``"10x"``, ``"3%"``, ``"40KB"``, bytes) into bytes of that dense fp32 table;
3. build the student's table with a session recipe's builder, fitted to those rows (OD-Rec's
   :func:`~pocketrec.methods.odrec.tt_table_builder`, EODRec's
   :func:`~pocketrec.methods.eodrec.codebook_table_builder`);
4. the student = the teacher's user vectors (frozen unless ``train_users``) with that table;
5. fine-tune it with :func:`~pocketrec.train.run.run_training` on BPR plus, by default, a distillation
   term from the full model (:class:`CFDistillConfig`), selecting the epoch on validation NDCG@20.

The methods (:mod:`pocketrec.methods.registry`): ``cf-tt`` and ``cf-codebook`` (the recipe with each
table), and two baselines at the same bytes: ``cf-kmeans`` (residual k-means codebooks of the propagated
vectors, no training: the ``kmeans`` baseline's table) and ``cf-dense-small`` (the teacher's backbone with
the largest smaller ``d`` whose device table fits, trained from scratch with the teacher's loss).

No paper ran these tables on a CF backbone (OD-Rec and EODRec are session recommenders): the session
recipes' self-supervised terms (hot/cold recombination, predictive CE) have no counterpart here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from pocketrec.backbones.base import LossFn, Recommender, backbone_class
from pocketrec.backbones.user_vectors import UserVectorConfig, UserVectorModel
from pocketrec.bench.baselines import Int8Config, KMeansConfig
from pocketrec.config import to_dict
from pocketrec.methods.eodrec import DEFAULT_DTYPE, check_codebook_layout, codebook_table_builder
from pocketrec.methods.odrec import check_order, tt_table_builder
from pocketrec.methods.recipe import CompressResult, RecipeConfig, TableBuilder
from pocketrec.search.budget import parse_budget
from pocketrec.tables.base import STORED_DTYPES
from pocketrec.tables.codebook import DEFAULT_MAX_CODEBOOKS
from pocketrec.tables.dense import DenseTable
from pocketrec.tables.quantized import QuantizedTable
from pocketrec.train.checkpoint import load_checkpoint, save_checkpoint
from pocketrec.train.compat import check_compatible
from pocketrec.train.distributed import global_mean, is_main
from pocketrec.train.run import dataset_meta, run_training
from pocketrec.train.trainer import TrainConfig, seed_everything

#: the distillation terms (:class:`CFDistillConfig`)
KD_KINDS = ("none", "kl")
#: most teacher (and student) scores one distillation term holds at once: users x catalogue
KD_MAX_SCORES = 2**24


def cf_student_train() -> TrainConfig:
    """The students' schedule: LightGCN's batch (BPR over every training interaction once per epoch), its
    learning rate, and patience 5 (a student starts next to the teacher and settles in tens of epochs)."""
    return TrainConfig(batch_size=2048, epochs=100, patience=5, lr=1e-3, eval_batch_size=1024)


def cf_teacher_train() -> TrainConfig:
    """A from-scratch model's schedule: the CF backbones' own (LightGCN's reference: batch 2048, 400 epochs,
    patience 10)."""
    return TrainConfig(**backbone_class("lightgcn").train_defaults)


@dataclass
class CFDistillConfig:
    """The students' loss: ``BPR + kd_weight * KD``; by default BPR + KL, which measured best on ml-100k for
    both tables (``benchmarks/cf_tables.py``; at 40x with a converged LightGCN, test NDCG@20: TT 24.8 with the
    KL term vs 15.8 BPR alone, codebooks 28.9 vs 28.2).

    ``kd``: ``"kl"`` (default): for up to ``kd_users`` of the batch's users (at most ``2^24`` scores in all),
    ``T^2 KL(softmax(teacher / T) || softmax(student / T))`` over the whole catalogue with ``T =
    temperature``; ``exclude_seen`` leaves the users' training items out of both distributions (they are
    the BPR term's). ``"none"``: BPR alone.
    """

    kd: str = "kl"
    kd_weight: float = 1.0
    temperature: float = 1.0
    kd_users: int = 256
    exclude_seen: bool = False

    def __post_init__(self) -> None:
        if self.kd not in KD_KINDS:
            raise ValueError(f"kd must be one of {', '.join(KD_KINDS)}, got {self.kd!r}")
        if self.kd_weight < 0 or self.temperature <= 0 or self.kd_users < 1:
            raise ValueError("kd_weight must be >= 0, temperature > 0 and kd_users >= 1")


def softmax_kl(target: Tensor, scores: Tensor) -> Tensor:
    """``mean_rows KL(softmax(target) || softmax(scores))`` of two ``(B, n)`` score matrices (already divided by
    the temperature): the distillation term of the CF students (:func:`cf_distillation_loss`, PEEL)."""
    log_target = nn.functional.log_softmax(target, dim=1)
    return (log_target.exp() * (log_target - nn.functional.log_softmax(scores, dim=1))).sum(1).mean()


def kd_user_cap(config: CFDistillConfig, num_items: int) -> int:
    """How many of a batch's users the KD term scores: ``kd_users``, and at most ``2^24`` scores in all."""
    return max(1, min(config.kd_users, KD_MAX_SCORES // (num_items + 1)))


def kd_users_of(batch: Tensor, cap: int) -> Tensor:
    """The distinct users of a BPR ``batch`` (column 0), a random ``cap`` of them when there are more."""
    users = torch.unique(batch[:, 0].cpu())
    return users[torch.randperm(len(users))[:cap]] if len(users) > cap else users


def cf_distillation_loss(student: UserVectorModel, teacher: UserVectorModel, config: CFDistillConfig,
                         seen: Any = None) -> LossFn:
    """``loss_fn(batch) -> (loss, parts)`` for BPR batches: the student's own BPR loss plus the
    :class:`CFDistillConfig` term (``parts``: ``bpr``, ``l2``, ``kd``, the KD part weighted). ``seen`` (the
    training interactions, CSR) is needed with ``exclude_seen``."""
    base = student.training_loss()
    if config.kd == "none" or config.kd_weight == 0:
        return base
    if config.exclude_seen and seen is None:
        raise ValueError("exclude_seen needs the training interactions (seen=dataset.train)")
    cap = kd_user_cap(config, student.num_items)
    temperature = config.temperature

    def loss_fn(batch: Tensor) -> tuple[Tensor, dict[str, float]]:
        loss, parts = base(batch)
        users = kd_users_of(batch, cap)
        with torch.no_grad():
            target = teacher.score_users(users)[:, 1:].float() / temperature
        scores = student.score_users(users)[:, 1:].float() / temperature
        if config.exclude_seen:
            block = seen[users.numpy()].tocoo()
            rows = torch.from_numpy(block.row).long().to(scores.device)
            cols = torch.from_numpy(block.col).long().to(scores.device) - 1
            mask = torch.zeros_like(scores, dtype=torch.bool)
            mask[rows, cols] = True
            target, scores = target.masked_fill(mask, -1e9), scores.masked_fill(mask, -1e9)
        kd = config.kd_weight * temperature**2 * global_mean(softmax_kl(target, scores), len(users))
        return loss + kd, {**parts, "kd": float(kd.detach())}

    return loss_fn


# ------------------------------------------------------------------------------------------- the teacher


def device_form(model: Recommender, dataset: Any, method: str, what: str = "the teacher") -> UserVectorModel:
    """``model``'s device form, a dense-table :class:`UserVectorModel` attached to ``dataset`` (``ValueError``
    for a model that is not collaborative filtering)."""
    if model.device_query != UserVectorModel.device_query or not hasattr(model, "to_user_vectors"):
        raise ValueError(f"{method} compresses a collaborative-filtering teacher (lightgcn, user-vectors); {what} "
                         f"is a {model.backbone!r} model (for session models use odrec, tt or eodrec)")
    model.attach(dataset)
    return model.to_user_vectors()


@dataclass
class CFTeacher:
    """A loaded CF teacher: the model as trained, its device form, its checkpoint meta and path, and the
    bytes of its dense fp32 device table (what budgets are relative to)."""

    model: Recommender
    device: UserVectorModel
    meta: dict[str, Any]
    path: Path

    @property
    def dense_bytes(self) -> int:
        return DenseTable.bytes_for(self.device.num_items, self.device.config.dim)


def load_cf_teacher(path: str | Path, dataset: Any, method: str) -> CFTeacher:
    """The teacher checkpoint at ``path`` (refused if trained on other data or not a CF model)."""
    path = Path(path)
    model, meta = load_checkpoint(path)
    check_compatible(meta, dataset, what=f"teacher {path}")
    return CFTeacher(model, device_form(model, dataset, method, f"teacher {path}"), meta, path)


# ------------------------------------------------------------------------------------------- the recipe


def compress_cf(method: str, teacher_checkpoint: str | Path, dataset: Any, budget: str | int,
                build_table: TableBuilder, *, out_dir: str | Path | None = None,
                distill: CFDistillConfig | None = None, train: TrainConfig | None = None,
                train_users: bool = False, fine_tune: bool = True) -> tuple[UserVectorModel, CompressResult]:
    """Run the recipe (module docstring) for ``method``: the student of ``build_table`` at ``budget``.

    ``fine_tune=False`` is a post-hoc baseline: the built table as it is, evaluated on validation and test
    and saved to ``out_dir/best``. ``out_dir`` gets the student's ``best/`` (and ``last/``) checkpoints,
    meta ``method``, ``teacher``, ``teacher_test``, ``table_bytes``, ``dense_table_bytes`` (the teacher's
    dense fp32 table of propagated item vectors), ``ratio``, ``budget_bytes`` and the builder's meta.
    """
    distill = distill or CFDistillConfig()
    train = train or cf_student_train()
    teacher = load_cf_teacher(teacher_checkpoint, dataset, method)
    budget_bytes = parse_budget(budget, teacher.dense_bytes)

    seed_everything(train.seed)
    table, table_meta = build_table(teacher.device, budget_bytes)
    config = UserVectorConfig(dim=teacher.device.config.dim, train_users=train_users)
    student = UserVectorModel(teacher.device.num_users, table, config, user_vectors=teacher.device.user_vectors)
    student.attach(dataset)
    table_bytes = table.nbytes()
    meta = {**dataset_meta(dataset), "method": method, "teacher": str(teacher.path),
            "teacher_backbone": teacher.model.backbone, "teacher_test": teacher.meta.get("test"),
            "table_bytes": table_bytes, "dense_table_bytes": teacher.dense_bytes,
            "ratio": teacher.dense_bytes / table_bytes, "budget_bytes": budget_bytes, **table_meta}
    if not fine_tune:
        return student, _post_hoc(student, dataset, out_dir, meta, teacher.dense_bytes)
    meta["distill"] = to_dict(distill)
    loss = cf_distillation_loss(student, teacher.device, distill, seen=dataset.train)
    fit = run_training(student, dataset, train, out_dir, loss, meta)
    return student, CompressResult(fit=fit, test=fit.history[-1]["test"], table_bytes=table_bytes,
                                   dense_table_bytes=teacher.dense_bytes, meta=meta)


def _post_hoc(model: UserVectorModel, dataset: Any, out_dir: str | Path | None, meta: dict[str, Any],
              dense_bytes: int) -> CompressResult:
    model.eval()
    meta = {**meta, "valid": model.evaluate(dataset, "valid"), "test": model.evaluate(dataset, "test")}
    if out_dir is not None and is_main():  # torch.distributed: rank 0 writes
        save_checkpoint(Path(out_dir) / "best", model, meta)
    return CompressResult(fit=None, test=meta["test"], table_bytes=meta["table_bytes"],
                          dense_table_bytes=dense_bytes, meta=meta)


def dense_small(method: str, teacher_checkpoint: str | Path, dataset: Any, budget: str | int, *,
                out_dir: str | Path | None = None, train: TrainConfig | None = None
                ) -> tuple[Recommender, CompressResult]:
    """The teacher's backbone and config with the largest ``dim`` whose dense device table fits ``budget``
    (for LightGCN: the propagated item vectors, ``out_dim`` wide), trained from scratch on its own loss."""
    train = train or cf_teacher_train()
    teacher = load_cf_teacher(teacher_checkpoint, dataset, method)
    budget_bytes = parse_budget(budget, teacher.dense_bytes)
    cls, config = type(teacher.model), teacher.model.config
    num_items = teacher.device.num_items

    def device_bytes(dim: int) -> int:
        shaped = dataclasses.replace(config, dim=dim)
        return DenseTable.bytes_for(num_items, getattr(shaped, "out_dim", dim))

    dim = next((d for d in range(config.dim, 0, -1) if device_bytes(d) <= budget_bytes), 0)
    if dim == 0:
        raise ValueError(f"budget {budget_bytes:,} B is below the smallest dense table ({device_bytes(1):,} B "
                         f"for d=1, {num_items:,} items)")
    seed_everything(train.seed)
    model = cls.build_teacher(dataset, dataclasses.replace(config, dim=dim))
    table_bytes = device_bytes(dim)
    meta = {**dataset_meta(dataset), "method": method, "teacher": str(teacher.path),
            "teacher_test": teacher.meta.get("test"), "table_bytes": table_bytes,
            "dense_table_bytes": teacher.dense_bytes, "ratio": teacher.dense_bytes / table_bytes,
            "budget_bytes": budget_bytes, "dim": dim}
    fit = run_training(model, dataset, train, out_dir, None, meta)
    return model, CompressResult(fit=fit, test=fit.history[-1]["test"], table_bytes=table_bytes,
                                 dense_table_bytes=teacher.dense_bytes, meta=meta)


# ------------------------------------------------------------------------------------------- the methods


@dataclass
class CFRecipeConfig(RecipeConfig):
    """The keys of every ``pocketrec compress --method cf-*`` student: ``train_users`` (fine-tune the user
    vectors too; default frozen, the teacher's), ``distill`` (:class:`CFDistillConfig`), ``train``."""

    budget: str = "10x"
    train_users: bool = False
    distill: CFDistillConfig = field(default_factory=CFDistillConfig)
    train: TrainConfig = field(default_factory=cf_student_train)


@dataclass
class CFTTConfig(CFRecipeConfig):
    """``cf-tt``: OD-Rec's TT table (:func:`~pocketrec.methods.odrec.tt_table_builder`; ``t=2`` its
    semi-tensor product, ``t=1`` plain TT), its cores fitted to the propagated item vectors."""

    num_cores: int = 2
    t: int = 2
    warm_start: bool = True
    warm_start_steps: int = 300
    order: str = "identity"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_cores < 2 or self.t < 1 or self.warm_start_steps < 0:
            raise ValueError("num_cores must be >= 2, t >= 1 and warm_start_steps >= 0")
        check_order(self.order)


@dataclass
class CFCodebookConfig(CFRecipeConfig):
    """``cf-codebook``: EODRec's codebook table (:func:`~pocketrec.methods.eodrec.codebook_table_builder`:
    ``M``/``K`` 0 = the budget solver's, codes from the propagated item vectors by a quantizer of
    :mod:`pocketrec.quantize` (default ``rq``) or the autoencoder (``learned``/``gumbel``), then frozen while the
    codebooks fine-tune; ``ranked`` is EODRec's, for session teachers)."""

    stored_dtypes: ClassVar[tuple[str, ...]] = STORED_DTYPES
    dtype: str = DEFAULT_DTYPE
    M: int = 0
    K: int = 0
    bitpack: bool = True
    max_codebooks: int = DEFAULT_MAX_CODEBOOKS
    codes: str = "rq"
    code_epochs: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        check_codebook_layout(self)
        if self.codes == "ranked":
            raise ValueError("codes=ranked judges codes with a session teacher's encoder; cf-codebook takes a "
                             "quantizer by name (rq, faiss-rq, ...) or learned")


@dataclass
class CFKMeansConfig(KMeansConfig):
    """``cf-kmeans``: residual k-means codebooks of the propagated item vectors in ``cf-codebook``'s layout,
    no training: the ``kmeans`` baseline's keys and checks, at the CF recipes' default budget."""

    budget: str = "10x"


@dataclass
class CFDenseSmallConfig(RecipeConfig):
    """``cf-dense-small``: the teacher's backbone with a smaller ``d`` whose device table fits, from scratch
    (``train``: the backbone's own schedule)."""

    budget: str = "10x"
    train: TrainConfig = field(default_factory=cf_teacher_train)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype != "float32":
            raise ValueError(f"dtype does not apply to cf-dense-small (its table is float32), got {self.dtype!r}")


def _teacher_path(cfg: RecipeConfig) -> str:
    if not cfg.teacher:
        raise ValueError("no teacher checkpoint given (--teacher runs/teacher-DATASET/best, a lightgcn checkpoint)")
    return cfg.teacher


def compress_cf_tt(cfg: CFTTConfig, dataset: Any) -> tuple[UserVectorModel, CompressResult]:
    """``cf-tt`` (the registry's runner)."""
    builder = tt_table_builder(cfg.num_cores, cfg.t, cfg.warm_start, cfg.warm_start_steps, seed=cfg.train.seed,
                               dtype=cfg.dtype, order=cfg.order)
    return compress_cf("cf-tt", _teacher_path(cfg), dataset, cfg.budget, builder, out_dir=cfg.out or None,
                       distill=cfg.distill, train=cfg.train, train_users=cfg.train_users)


def compress_cf_codebook(cfg: CFCodebookConfig, dataset: Any) -> tuple[UserVectorModel, CompressResult]:
    """``cf-codebook`` (the registry's runner)."""
    builder = codebook_table_builder(cfg.M, cfg.K, cfg.bitpack, cfg.max_codebooks, cfg.codes, cfg.code_epochs,
                                     seed=cfg.train.seed, dtype=cfg.dtype, progress=cfg.train.progress)
    return compress_cf("cf-codebook", _teacher_path(cfg), dataset, cfg.budget, builder, out_dir=cfg.out or None,
                       distill=cfg.distill, train=cfg.train, train_users=cfg.train_users)


def compress_cf_kmeans(cfg: CFKMeansConfig, dataset: Any) -> tuple[UserVectorModel, CompressResult]:
    """``cf-kmeans`` (the registry's runner): no training."""
    builder = codebook_table_builder(cfg.M, cfg.K, cfg.bitpack, cfg.max_codebooks, codes="rq", seed=cfg.seed,
                                     dtype=cfg.dtype)
    return compress_cf("cf-kmeans", _teacher_path(cfg), dataset, cfg.budget, builder, out_dir=cfg.out or None,
                       fine_tune=False)


def quantized_builder(bits: int) -> TableBuilder:
    """``builder(teacher, budget_bytes)``: the teacher's rows as ``bits``-bit integers with a float32 scale
    each (:class:`~pocketrec.tables.quantized.QuantizedTable`); the size is fixed, the budget only checked."""

    def build(teacher: Any, budget_bytes: int) -> tuple[QuantizedTable, dict[str, Any]]:
        table = QuantizedTable.from_rows(teacher.table.all_rows().detach(), bits=bits)
        if table.nbytes() > budget_bytes:
            raise ValueError(f"int{bits} rows take {table.nbytes():,} B, over the budget {budget_bytes:,} B")
        return table, {"bits": bits}

    return build


def compress_cf_quantized(cfg: Int8Config, data: Any) -> tuple[UserVectorModel, CompressResult]:
    """``cf-int8`` / ``cf-int4`` (the registry's runners): no training; the budget defaults to the dense table."""
    method = f"cf-int{cfg.bits}"
    budget = cfg.budget if cfg.budget != RecipeConfig.budget else "1x"
    return compress_cf(method, _teacher_path(cfg), data, budget, quantized_builder(cfg.bits), out_dir=cfg.out or None,
                       fine_tune=False)


def compress_cf_dense_small(cfg: CFDenseSmallConfig, dataset: Any) -> tuple[Recommender, CompressResult]:
    """``cf-dense-small`` (the registry's runner)."""
    return dense_small("cf-dense-small", _teacher_path(cfg), dataset, cfg.budget, out_dir=cfg.out or None,
                       train=cfg.train)
