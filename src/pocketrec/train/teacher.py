"""Train a teacher: a session encoder with a dense item table, cross-entropy over the catalogue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pocketrec.config import to_dict
from pocketrec.data.batching import Batch
from pocketrec.data.dataset import Dataset
from pocketrec.eval.evaluate import evaluate
from pocketrec.models.session_encoder import EncoderConfig, SessionRecommender
from pocketrec.tables.dense import DenseTable
from pocketrec.train.catalogue_loss import catalogue_cross_entropy
from pocketrec.train.checkpoint import (
    CheckpointError,
    load_optimizer_state,
    load_weights_into,
    read_meta,
    read_weights,
    restore_interrupted_save,
    save_checkpoint,
)
from pocketrec.train.compat import check_compatible
from pocketrec.train.losses import targets_and_queries
from pocketrec.train.trainer import FitResult, TrainConfig, checkpoint_dirs, fit, seed_everything


@dataclass
class TeacherConfig:
    """Everything ``pocketrec train`` reads: dataset, encoder shape, training schedule, output folder."""

    dataset: str = "ml-100k"
    out: str = ""
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def dataset_meta(dataset: Dataset) -> dict[str, Any]:
    """What a checkpoint records about its data, so that it can refuse another dataset later."""
    origin = {"dataset_origin": dataset.origin} if dataset.origin and dataset.origin != dataset.name else {}
    return {"dataset": dataset.name, **origin, "protocol": dataset.protocol, "num_items": dataset.num_items,
            "vocab_fingerprint": dataset.vocab.fingerprint(), "vocab": dataset.vocab.to_json()}


def ce_loss(model: SessionRecommender):
    def loss_fn(batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        queries, targets = targets_and_queries(model, batch)
        return catalogue_cross_entropy(queries, model.scoring_rows(), targets), {}
    return loss_fn


def run_training(model: SessionRecommender, dataset: Dataset, train_cfg: TrainConfig, out_dir: str | Path | None,
                 loss_fn, meta: dict[str, Any], resume: bool = False,
                 parameters: list[dict[str, Any]] | None = None,
                 on_step: Callable[[int], None] | None = None) -> FitResult:
    """Fit ``model`` with ``loss_fn``, selecting on validation; writes ``best/`` and ``last/`` checkpoints.

    Shared by the teacher and by every compression recipe. The test split is evaluated once, at the
    best-validation epoch, and stored in ``best/checkpoint.json`` as ``test``.
    """
    max_len = model.config.max_len
    best_dir = last_dir = None
    if out_dir is not None:
        best_dir, last_dir = checkpoint_dirs(out_dir)

    def validate() -> dict[str, float]:
        return evaluate(model, dataset.valid, batch_size=train_cfg.eval_batch_size, desc="valid")

    fit_history: list[dict[str, Any]] = []

    def on_epoch_end(epoch, record, is_best, optimizer) -> None:
        fit_history.append(_plain(record))
        if out_dir is None:
            return
        info = {**meta, "epoch": epoch, "valid": record["valid"], "train_config": to_dict(train_cfg)}
        if is_best:
            save_checkpoint(best_dir, model, info)
        save_checkpoint(last_dir, model, {**info, "history": fit_history,
                                          "trainer_state": record["trainer_state"]}, optimizer)

    def restore(optimizer) -> dict[str, Any] | None:
        if not resume or last_dir is None:
            return None
        for folder in (best_dir, last_dir):  # a save killed between its two renames leaves the old one aside
            restore_interrupted_save(folder)
        if not last_dir.exists():
            return None
        last = read_meta(last_dir)
        check_compatible(last, dataset, what=f"the run to resume ({last_dir})")
        if last.get("dataset") != dataset.name:  # same catalogue, other data: the run would be relabelled
            raise CheckpointError(f"{last_dir} was trained on {last.get('dataset')!r}; it cannot be resumed on "
                                  f"{dataset.name!r}")
        if last.get("method") != meta.get("method"):
            raise CheckpointError(f"{last_dir} is a {last.get('method')!r} run; it cannot be resumed as "
                                  f"{meta.get('method')!r}")
        load_weights_into(last_dir, model)
        load_optimizer_state(last_dir, optimizer)
        state = dict(last["trainer_state"])
        state["history"] = last.get("history", [])
        fit_history.extend(state["history"])
        if best_dir is not None and best_dir.exists():
            state["best_state"] = read_weights(best_dir)
        return state

    seed_everything(train_cfg.seed)
    result = fit(model, dataset.train, loss_fn, validate, train_cfg, max_len, parameters=parameters,
                 on_epoch_end=on_epoch_end, resume=restore, on_step=on_step)
    test = evaluate(model, dataset.test, batch_size=train_cfg.eval_batch_size, desc="test")
    result.history.append({"test": test})
    if best_dir is not None:
        save_checkpoint(best_dir, model, {**meta, "epoch": result.best_epoch, "valid": result.best_valid,
                                          "test": test, "train_config": to_dict(train_cfg),
                                          "epoch_seconds": result.epoch_seconds})
    return result


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "trainer_state"}


def build_teacher(num_items: int, encoder: EncoderConfig, seed: int) -> SessionRecommender:
    seed_everything(seed)
    return SessionRecommender(encoder, DenseTable(num_items, encoder.dim))


def train_teacher(dataset: Dataset, config: TeacherConfig, resume: bool = False
                  ) -> tuple[SessionRecommender, FitResult]:
    """Train a dense teacher on ``dataset``; returns the best-on-validation model and the fit record."""
    model = build_teacher(dataset.num_items, config.encoder, config.train.seed)
    meta = {**dataset_meta(dataset), "method": "teacher"}
    result = run_training(model, dataset, config.train, config.out or None, ce_loss(model), meta, resume=resume)
    return model, result


def final_test_metrics(result: FitResult) -> dict[str, float]:
    return result.history[-1]["test"]
