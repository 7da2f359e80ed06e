"""Run a training: the backbone-agnostic loop of :mod:`.trainer` with checkpoints, resumption and the test.

:func:`run_training` is what every teacher (any backbone) and every compression recipe calls.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pocketrec.backbones.base import LossFn, Recommender
from pocketrec.config import to_dict
from pocketrec.train import distributed
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
from pocketrec.train.trainer import FitResult, TrainConfig, checkpoint_dirs, fit, seed_everything


def dataset_meta(dataset: Any) -> dict[str, Any]:
    """What a checkpoint records about its data, so that it can refuse another dataset later (and, for
    interaction data, the users' raw ids that a device artifact names its users by)."""
    origin = {"dataset_origin": dataset.origin} if dataset.origin and dataset.origin != dataset.name else {}
    meta = {"dataset": dataset.name, **origin, "protocol": dataset.protocol, "num_items": dataset.num_items,
            "vocab_fingerprint": dataset.vocab.fingerprint(), "vocab": dataset.vocab.to_json()}
    users = getattr(dataset, "users", None)
    if users is not None:
        meta.update({"num_users": len(users), "users": users.to_json()})
    return meta


def run_training(model: Recommender, dataset: Any, train_cfg: TrainConfig, out_dir: str | Path | None,
                 loss_fn: LossFn | None, meta: dict[str, Any], resume: bool = False,
                 parameters: list[dict[str, Any]] | None = None,
                 on_step: Callable[[int], None] | None = None) -> FitResult:
    """Fit ``model`` with ``loss_fn``, selecting on validation; writes ``best/`` and ``last/`` checkpoints.

    Shared by every backbone's teacher and by every compression recipe: the batches and the evaluation
    are the backbone's (:class:`~pocketrec.backbones.base.Recommender`), ``loss_fn`` defaults to its own
    training loss, and ``train_cfg.metric`` to its selection metric. The test split is evaluated once, at
    the best-validation epoch, and stored in ``best/checkpoint.json`` as ``test``.

    Under ``torch.distributed`` (:mod:`pocketrec.train.distributed`) every rank calls this: training and
    evaluation are sharded, rank 0 alone writes the checkpoints (atomically, the single-process format) and
    alone reads the one to resume, which it broadcasts, so any world size resumes any run; an error in
    reading it is raised on every rank. Every rank returns the same result once rank 0's last save is done.
    """
    loss_fn = loss_fn or model.training_loss()
    train_cfg = dataclasses.replace(train_cfg, metric=train_cfg.metric or model.selection_metric)
    best_dir = last_dir = None
    if out_dir is not None:
        best_dir, last_dir = checkpoint_dirs(out_dir)

    def validate() -> dict[str, float]:
        return model.evaluate(dataset, "valid", batch_size=train_cfg.eval_batch_size, desc="valid")

    fit_history: list[dict[str, Any]] = []

    def on_epoch_end(epoch, record, is_best, optimizer) -> None:
        fit_history.append(_plain(record))
        if out_dir is None or not distributed.is_main():
            return
        info = {**meta, "epoch": epoch, "valid": record["valid"], "train_config": to_dict(train_cfg)}
        if is_best:
            save_checkpoint(best_dir, model, info)
        save_checkpoint(last_dir, model, {**info, "history": fit_history,
                                          "trainer_state": record["trainer_state"]}, optimizer)

    def restore(optimizer) -> dict[str, Any] | None:
        if not resume or last_dir is None:
            return None
        if not distributed.is_distributed():
            return read_resume_state(optimizer)

        def read() -> tuple[dict[str, Any], Any, Any] | None:
            state = read_resume_state(optimizer)
            return None if state is None else (state, model.state_dict(), optimizer.state_dict())

        payload = distributed.on_main(read)
        if payload is None:
            return None
        state, weights, optimizer_state = payload
        if not distributed.is_main():
            model.load_state_dict(weights)
            optimizer.load_state_dict(optimizer_state)
            fit_history.extend(state["history"])
        return state

    def read_resume_state(optimizer) -> dict[str, Any] | None:
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
    batches = model.training_batches(dataset, train_cfg.batch_size)
    result = fit(model, batches, loss_fn, validate, train_cfg, parameters=parameters,
                 on_epoch_end=on_epoch_end, resume=restore, on_step=on_step)
    test = model.evaluate(dataset, "test", batch_size=train_cfg.eval_batch_size, desc="test")
    result.history.append({"test": test})
    if best_dir is not None and distributed.is_main():
        save_checkpoint(best_dir, model, {**meta, "epoch": result.best_epoch, "valid": result.best_valid,
                                          "test": test, "train_config": to_dict(train_cfg),
                                          "epoch_seconds": result.epoch_seconds})
    distributed.barrier()
    return result


def _plain(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "trainer_state"}


