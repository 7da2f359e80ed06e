"""The training loop shared by every backbone, teachers and compressed students alike.

Epochs over the batches of a :class:`~pocketrec.data.batching.BatchSource` (whole sessions for the session
encoder, (user, positive, negative) triples for LightGCN), Adam, validation after each epoch, early
stopping on a validation metric, the best-on-validation weights kept, a progress bar, and resumption from
the last epoch's checkpoint. What is optimised is given as a ``loss_fn(batch) -> (loss, parts)``, so a
teacher's own loss and a distillation student's share this one loop.
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pocketrec.data.batching import BatchSource
from pocketrec.train import distributed
from pocketrec.train.allocator import reuse_large_allocations

LossFn = Callable[[Any], tuple[Tensor, dict[str, float]]]


class DivergedError(ValueError):
    """Training produced a non-finite loss, weight or validation metric. The run stops at once; the state
    that diverged is never saved (checkpoints written at earlier epochs stay as they were)."""


def nonfinite_tensors(module: nn.Module) -> list[str]:
    """Names of the floating-point parameters and buffers of ``module`` holding a NaN or an infinity."""
    return [name for name, value in module.state_dict().items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]


@dataclass
class TrainConfig:
    """How to train. ``metric`` picks the epoch: the best validation value wins.

    ``lr_decay`` multiplies every learning rate by this factor each ``lr_decay_every`` epochs (SR-GNN and
    GCE-GNN use 0.1 every 3); 1 keeps it constant. The rate of an epoch is a function of the epoch
    number alone, so a resumed run follows the same schedule.
    """

    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 1.0
    lr_decay_every: int = 1
    weight_decay: float = 0.0
    patience: int = 3
    #: "" = the backbone's own (session: mrr@20, LightGCN: ndcg@20)
    metric: str = ""
    seed: int = 42
    eval_batch_size: int = 256
    max_grad_norm: float = 5.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise ValueError(f"lr_decay must lie in (0, 1], got {self.lr_decay}")
        if self.lr_decay_every < 1:
            raise ValueError(f"lr_decay_every must be >= 1, got {self.lr_decay_every}")
        for name in ("patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("weight_decay", "max_grad_norm"):  # max_grad_norm=0: no clipping
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        # The epoch is chosen by this metric of the validation run, so a typo must fail now, not after
        # the first epoch: the names are those the evaluation of some backbone reports.
        from pocketrec.eval.metrics import SELECTION_METRICS

        if self.metric and self.metric not in SELECTION_METRICS:
            raise ValueError(f"metric must be one of {', '.join(SELECTION_METRICS)}; got {self.metric!r}")

    def lr_factor(self, epoch: int) -> float:
        """The factor on every group's base learning rate during ``epoch`` (0-based)."""
        return self.lr_decay ** (epoch // self.lr_decay_every)


@dataclass
class FitResult:
    best_epoch: int
    best_valid: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def epoch_seconds(self) -> float:
        times = [h["seconds"] for h in self.history if "seconds" in h]
        return sum(times) / max(len(times), 1)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU) so that two runs with the same seed give the same numbers."""
    torch.manual_seed(seed)


def fit(model: nn.Module, train: BatchSource, loss_fn: LossFn, validate: Callable[[], dict[str, float]],
        config: TrainConfig, *, parameters: list[dict[str, Any]] | None = None,
        on_epoch_end: Callable[[int, dict[str, Any], bool, torch.optim.Optimizer], None] | None = None,
        resume: Callable[[torch.optim.Optimizer], dict[str, Any] | None] | None = None,
        on_step: Callable[[int], None] | None = None,
        log: Callable[[str], None] | None = None) -> FitResult:
    """Train ``model`` and leave it holding its best-on-validation weights.

    ``parameters`` are optimizer parameter groups (default: all trainable parameters at ``lr``).
    ``on_epoch_end(epoch, record, is_best, optimizer)`` is where callers write checkpoints.
    ``resume(optimizer)`` may restore a previous run and return its saved trainer state
    (``{"epoch", "history", "best_epoch", "best_valid", "bad_epochs"}``).
    ``on_step(step)`` runs after every optimiser step, ``step`` counting from 1 over the whole run.

    A non-finite loss (checked before its step is taken), weight or validation metric raises
    :class:`DivergedError` before anything of that epoch reaches ``on_epoch_end``.

    Data-parallel when a ``torch.distributed`` process group is up (:mod:`pocketrec.train.distributed`):
    every rank draws the same global batches and trains on its slice of each, the gradients of the
    optimised parameters averaged by DDP; the loss checked and logged is the global one; ``validate``,
    ``resume`` and ``on_epoch_end`` run on every rank (they decide themselves what only rank 0 does); only
    rank 0 logs. A single process is the world of one: no wrapper, no communication, the same arithmetic.
    """
    with distributed.watching():  # the watchdog of a distributed run, armed while training
        return _fit(model, train, loss_fn, validate, config, parameters, on_epoch_end, resume, on_step, log)


def _fit(model, train, loss_fn, validate, config, parameters, on_epoch_end, resume, on_step, log) -> FitResult:
    reuse_large_allocations()
    main = distributed.is_main()
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))
    if not main:
        log = _silent
        config = distributed.local_config(config)
    groups = parameters or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = torch.optim.Adam(groups, lr=config.lr, weight_decay=config.weight_decay)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # before a resumed state overwrites them
    state = resume(optimizer) if resume else None
    start_epoch = 0
    history: list[dict[str, Any]] = []
    best_valid: dict[str, float] = {}
    best_epoch, bad_epochs = -1, 0
    best_state = None
    if state:
        start_epoch = int(state["epoch"]) + 1
        history = list(state.get("history", []))
        best_epoch = int(state.get("best_epoch", -1))
        best_valid = dict(state.get("best_valid", {}))
        bad_epochs = int(state.get("bad_epochs", 0))
        best_state = state.get("best_state")
        log(f"resumed after epoch {start_epoch}")
    # After resuming: DDP starts from rank 0's weights. The loss_fn itself in a single process.
    step_fn = distributed.data_parallel(loss_fn, [p for g in groups for p in g["params"]])
    sharded = distributed.is_distributed()
    steps = train.num_batches()
    stopped_early = False
    for epoch in range(start_epoch, config.epochs):
        seed_everything(config.seed + epoch)  # per-epoch seed: resumed runs replay the same batches
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = base * config.lr_factor(epoch)
        model.train()
        started = time.perf_counter()
        totals: dict[str, float] = {}
        batches = train.batches(config.seed + epoch)
        if sharded:
            batches = distributed.shard_batches(batches)
        bar = tqdm(batches, total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not config.progress,
                   leave=False, mininterval=1.0)
        for step, batch in enumerate(bar, 1):
            loss, parts = step_fn(batch)
            loss_value = loss.item()
            if sharded:
                loss_value, parts = distributed.mean_over_ranks(loss_value, parts)
                distributed.heartbeat()
            if not math.isfinite(loss_value):
                raise DivergedError(_diverged(f"epoch {epoch + 1}, step {step}: the loss is {loss_value}", best_epoch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], config.max_grad_norm)
            optimizer.step()
            if on_step is not None:
                on_step(epoch * steps + step)
            for name, value in {"loss": loss_value, **parts}.items():
                totals[name] = totals.get(name, 0.0) + value
            if step % 20 == 0:
                bar.set_postfix(loss=f"{totals['loss'] / step:.4f}")
        seconds = time.perf_counter() - started
        bad = nonfinite_tensors(model)
        if bad:
            raise DivergedError(_diverged(f"epoch {epoch + 1}: {len(bad)} weight tensor(s) hold NaN or infinite "
                                          f"values ({', '.join(bad[:3])})", best_epoch))
        valid = validate()
        bad = [name for name, value in valid.items() if not math.isfinite(value)]
        if bad:
            raise DivergedError(_diverged(f"epoch {epoch + 1}: validation {', '.join(bad[:3])} is not finite",
                                          best_epoch))
        record = {"epoch": epoch, "seconds": seconds, "lr": config.lr * config.lr_factor(epoch),
                  "train": {k: v / steps for k, v in totals.items()}, "valid": valid}
        history.append(record)
        score = valid[config.metric]
        is_best = best_epoch < 0 or score > best_valid.get(config.metric, float("-inf"))
        if is_best:
            best_epoch, best_valid, bad_epochs = epoch, valid, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad_epochs += 1
        log(f"epoch {epoch + 1}: loss {record['train']['loss']:.4f}  valid {config.metric} "
            f"{100 * score:.2f}{'  *best*' if is_best else ''}  ({seconds:.0f}s)")
        record["trainer_state"] = {"epoch": epoch, "best_epoch": best_epoch, "best_valid": best_valid,
                                   "bad_epochs": bad_epochs}
        if on_epoch_end:
            on_epoch_end(epoch, record, is_best, optimizer)
        if bad_epochs >= config.patience:
            stopped_early = True
            log(f"early stop: no better {config.metric} for {config.patience} epochs")
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(best_epoch=best_epoch, best_valid=best_valid, history=history, stopped_early=stopped_early)


def _silent(message: str) -> None:
    """The log of ranks other than 0."""


def _diverged(what: str, best_epoch: int) -> str:
    kept = (f"checkpoints of earlier epochs are kept (best: epoch {best_epoch + 1})" if best_epoch >= 0
            else "nothing was saved")
    return f"training diverged: {what}; stopped, {kept}. Try a lower --train.lr or --train.max_grad_norm"


def check_run_folder(out_dir: str | Path, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to start a run in a folder that already holds something, unless told what to do with it.

    ``resume`` continues the run there (its ``last/`` checkpoint); ``overwrite`` replaces it. Overwriting
    keeps the old run until the new one has a checkpoint of its own: ``best/`` and ``last/`` are each
    replaced atomically when the new run's first epoch ends, so a run that fails before that leaves the
    old one whole. Raises :class:`RunFolderError`.
    """
    out = Path(out_dir)
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; give one")
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a run folder")
    held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if held and not (resume or overwrite):
        shown = ", ".join(held[:4]) + (", ..." if len(held) > 4 else "")
        raise RunFolderError(f"--out {out} already holds a run ({shown}); pass --resume to continue it, "
                             "--overwrite to replace it, or choose another --out")


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (it holds another run's work)."""


def checkpoint_dirs(out_dir: str | Path) -> tuple[Path, Path]:
    """``(best, last)`` checkpoint folders of a run directory."""
    out = Path(out_dir)
    return out / "best", out / "last"
