"""The baselines a sceptical user compares a compressed student with, at the same item-table bytes.

* :func:`train_dense_small`: a dense table of the budget's bytes (the largest ``d`` that fits) trained
  from scratch with the teacher's recipe (cross-entropy only, no teacher);
* :func:`post_hoc_model`: the teacher's encoder with its item table compressed after training, no
  training at all: ``int8`` / ``int4`` (row-wise quantisation, fixed sizes) or ``kmeans`` (residual
  k-means codebooks of the teacher's rows at the budget, i.e. post-hoc additive/product quantisation).

Why residual rather than product k-means for the post-hoc codebooks: in pocketrec's codebook table every
codeword is a full ``d``-vector (sum composition), so product quantisation would be stored with zero-padded
codewords and pay ``M`` times its real codebook bytes; residual k-means uses full codewords and, at the same
counted bytes, reconstructs the teacher's rows better. Both are k-means codebooks with no training.

Each baseline is also a method of :mod:`pocketrec.methods.registry` (``dense-small``, ``kmeans``, ``int8``,
``int4``), with a small :class:`~pocketrec.methods.recipe.RecipeConfig` of its own and a
``compress_*(cfg, dataset) -> (model, CompressResult)`` runner, so ``pocketrec compress``, ``pocketrec
bench`` and the benchmarks name and run them like OD-Rec and EODRec.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from pocketrec.data.dataset import Dataset
from pocketrec.eval.evaluate import evaluate
from pocketrec.methods.eodrec import DEFAULT_DTYPE, check_codebook_layout, codebook_table_builder
from pocketrec.methods.recipe import CompressResult, RecipeConfig, teacher_rows
from pocketrec.models.session_encoder import SessionRecommender
from pocketrec.search.budget import parse_budget
from pocketrec.tables.base import STORED_DTYPES
from pocketrec.tables.codebook import DEFAULT_MAX_CODEBOOKS
from pocketrec.tables.dense import DenseTable
from pocketrec.tables.quantized import QuantizedTable
from pocketrec.train.checkpoint import copy_weights, load_checkpoint, save_checkpoint
from pocketrec.train.compat import check_compatible
from pocketrec.train.distributed import is_main
from pocketrec.train.run import dataset_meta, run_training
from pocketrec.train.trainer import FitResult, TrainConfig, seed_everything

POST_HOC = ("int8", "int4", "kmeans")


def train_dense_small(teacher: SessionRecommender, data: Dataset, budget_bytes: int, train: TrainConfig,
                      out_dir: str | Path | None, dtype: str = "float32") -> tuple[SessionRecommender, FitResult]:
    """A dense table of at most ``budget_bytes`` (smaller ``d``) with the teacher's encoder shape, from scratch."""
    seed_everything(train.seed)
    table = DenseTable.for_budget(data.num_items, teacher.config.dim, budget_bytes, dtype=dtype)
    heads = teacher.config.heads if table.dim % teacher.config.heads == 0 else 1
    model = SessionRecommender(dataclasses.replace(teacher.config, dim=table.dim, heads=heads), table)
    meta = {**dataset_meta(data), "method": "dense-small", "table_bytes": table.nbytes()}
    return model, run_training(model, data, train, out_dir, None, meta)


def post_hoc_table(kind: str, teacher: SessionRecommender, budget_bytes: int | None, seed: int = 0,
                   **layout: Any):
    """The teacher's item table compressed without training (``kind`` in :data:`POST_HOC`); ``layout``
    overrides the kmeans codebooks' EODRec layout keys (``dtype``, ``max_codebooks``, ``M``, ``K``...)."""
    rows = teacher_rows(teacher)
    if layout and kind != "kmeans":
        raise ValueError(f"layout keys {sorted(layout)} apply to the kmeans baseline only, not {kind!r}")
    if kind in ("int8", "int4"):
        return QuantizedTable.from_rows(rows, bits=int(kind[3:]))
    if kind == "kmeans":
        if budget_bytes is None:
            raise ValueError("the kmeans baseline needs a budget")
        # the EODRec student's layout (M, K, precision, packing) with residual k-means codes, no training
        return codebook_table_builder(codes="rq", seed=seed, **layout)(teacher, budget_bytes)[0]
    raise ValueError(f"unknown post-hoc baseline {kind!r} (known: {', '.join(POST_HOC)})")


def post_hoc_model(kind: str, teacher: SessionRecommender, data: Dataset, budget_bytes: int | None,
                   out_dir: str | Path | None = None, seed: int = 0, **layout: Any,
                   ) -> tuple[SessionRecommender, dict[str, Any]]:
    """The teacher with a post-hoc compressed table, evaluated on validation and test; saved to ``out_dir/best``."""
    table = post_hoc_table(kind, teacher, budget_bytes, seed, **layout)
    model = SessionRecommender(teacher.config, table)
    copy_weights(teacher, model, skip_prefix="table.")
    model.eval()
    meta = {**dataset_meta(data), "method": kind, "table_bytes": table.nbytes(),
            "valid": evaluate(model, data.valid), "test": evaluate(model, data.test)}
    if out_dir is not None and is_main():  # torch.distributed: rank 0 writes
        save_checkpoint(Path(out_dir) / "best", model, meta)
    return model, meta


@dataclass
class DenseSmallConfig(RecipeConfig):
    """``dense-small`` (``pocketrec compress --method dense-small``): the budget buys a smaller ``d``; ``train``
    is its from-scratch schedule (``pocketrec bench`` gives it the teacher's)."""

    train: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class KMeansConfig(RecipeConfig):
    """``kmeans``: residual k-means codebooks of the teacher's rows in the EODRec student's layout (same keys
    and defaults as :class:`~pocketrec.methods.eodrec.EODRecConfig`: ``M``/``K`` 0 = chosen by the budget
    solver, ``bitpack``, ``dtype``, ``max_codebooks``); ``seed`` seeds the k-means."""

    stored_dtypes: ClassVar[tuple[str, ...]] = STORED_DTYPES
    dtype: str = DEFAULT_DTYPE
    M: int = 0
    K: int = 0
    bitpack: bool = True
    max_codebooks: int = DEFAULT_MAX_CODEBOOKS
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_codebook_layout(self)


@dataclass
class Int8Config(RecipeConfig):
    """``int8``: the teacher's rows as 8-bit integers with a float32 scale each; no budget (the size is fixed)."""

    bits: ClassVar[int] = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype != "float32":
            raise ValueError(f"dtype does not apply to int{self.bits} (rows are {self.bits}-bit integers with "
                             f"float32 scales), got {self.dtype!r}")


@dataclass
class Int4Config(Int8Config):
    """``int4``: as ``int8`` with 4-bit integers (two per byte)."""

    bits: ClassVar[int] = 4


def _teacher_of(cfg: RecipeConfig, data: Dataset) -> tuple[SessionRecommender, int]:
    """The teacher of ``cfg`` (refused if trained on other data) and the bytes of its dense fp32 table."""
    if not cfg.teacher:
        raise ValueError("no teacher checkpoint given (--teacher runs/teacher-DATASET/best)")
    teacher, meta = load_checkpoint(cfg.teacher)
    check_compatible(meta, data, what=f"teacher {cfg.teacher}")
    return teacher, DenseTable.bytes_for(teacher.num_items, teacher.config.dim)


def compress_dense_small(cfg: DenseSmallConfig, data: Dataset) -> tuple[SessionRecommender, CompressResult]:
    """:func:`train_dense_small` driven by a :class:`DenseSmallConfig` (the registry's runner)."""
    teacher, dense_bytes = _teacher_of(cfg, data)
    budget_bytes = parse_budget(cfg.budget, dense_bytes)
    model, fit = train_dense_small(teacher, data, budget_bytes, cfg.train, cfg.out or None, dtype=cfg.dtype)
    meta = {"method": "dense-small", "table_bytes": model.table.nbytes(), "dim": model.table.dim,
            "budget_bytes": budget_bytes}
    return model, CompressResult(fit=fit, test=fit.history[-1]["test"], table_bytes=model.table.nbytes(),
                                 dense_table_bytes=dense_bytes, meta=meta)


def _post_hoc_result(kind: str, cfg: RecipeConfig, data: Dataset, teacher: SessionRecommender, dense_bytes: int,
                     budget_bytes: int | None, seed: int = 0, **layout: Any,
                     ) -> tuple[SessionRecommender, CompressResult]:
    model, meta = post_hoc_model(kind, teacher, data, budget_bytes, cfg.out or None, seed=seed, **layout)
    return model, CompressResult(fit=None, test=meta["test"], table_bytes=meta["table_bytes"],
                                 dense_table_bytes=dense_bytes, meta=meta)


def compress_kmeans(cfg: KMeansConfig, data: Dataset) -> tuple[SessionRecommender, CompressResult]:
    """The ``kmeans`` baseline driven by a :class:`KMeansConfig` (the registry's runner); no training."""
    teacher, dense_bytes = _teacher_of(cfg, data)
    layout = {"M": cfg.M, "K": cfg.K, "bitpack": cfg.bitpack, "max_codebooks": cfg.max_codebooks, "dtype": cfg.dtype}
    return _post_hoc_result("kmeans", cfg, data, teacher, dense_bytes, parse_budget(cfg.budget, dense_bytes),
                            seed=cfg.seed, **layout)


def compress_quantized(cfg: Int8Config, data: Dataset) -> tuple[SessionRecommender, CompressResult]:
    """The ``int8`` / ``int4`` baseline driven by its config (the registry's runner); no training, no budget."""
    teacher, dense_bytes = _teacher_of(cfg, data)
    return _post_hoc_result(f"int{cfg.bits}", cfg, data, teacher, dense_bytes, None)
