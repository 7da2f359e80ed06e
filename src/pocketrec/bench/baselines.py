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
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pocketrec.data.dataset import Dataset
from pocketrec.eval.evaluate import evaluate
from pocketrec.methods.eodrec import codebook_table_builder
from pocketrec.methods.recipe import teacher_rows
from pocketrec.models.session_encoder import SessionRecommender
from pocketrec.tables.dense import DenseTable
from pocketrec.tables.quantized import QuantizedTable
from pocketrec.train.checkpoint import copy_weights, save_checkpoint
from pocketrec.train.run import dataset_meta, run_training
from pocketrec.train.trainer import FitResult, TrainConfig, seed_everything

POST_HOC = ("int8", "int4", "kmeans")


def train_dense_small(teacher: SessionRecommender, data: Dataset, budget_bytes: int, train: TrainConfig,
                      out_dir: str | Path | None) -> tuple[SessionRecommender, FitResult]:
    """A dense table of at most ``budget_bytes`` (smaller ``d``) with the teacher's encoder shape, from scratch."""
    seed_everything(train.seed)
    table = DenseTable.for_budget(data.num_items, teacher.config.dim, budget_bytes)
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
    if out_dir is not None:
        save_checkpoint(Path(out_dir) / "best", model, meta)
    return model, meta
