"""The runs of ``test_distributed.py``: each is executed once in a single process and once by the workers of
``torch.multiprocessing.spawn`` (gloo, a file store), which import this module.

ml-100k (it ships inside the recbole wheel that ``make setup`` installs) is the small real dataset: the
session teacher trains on a slice of its users' histories, LightGCN on all of it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import traceback
from pathlib import Path
from typing import Any

import torch

TIMEOUT_S = 30.0


@functools.cache
def session_data():
    """ml-100k's sequences, the training split cut to the users that give 1 + a multiple of the batch
    windows (the last batch has one row: with 2 ranks one of them trains on a padding row)."""
    from pocketrec.data.batching import windows
    from pocketrec.data.dataset import SequenceSplit
    from pocketrec.models.session_encoder import SessionRecommender

    data = SessionRecommender.load_dataset("ml-100k")
    train = SequenceSplit(data.train.sequences[:128], data.train.first_target[:128])
    data = dataclasses.replace(data, train=train)
    return data, len(windows(train, MAX_LEN))


MAX_LEN = 20
BATCH = 64


def train_config(epochs: int = 2, batch_size: int = BATCH, seed: int = 3):
    from pocketrec.train.trainer import TrainConfig

    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=5e-3, seed=seed, progress=False, patience=5)


def session_teacher(out: Path, epochs: int = 2, resume: bool = False) -> dict[str, Any]:
    """A dropout-free session teacher, 2 epochs (``resume``: continue the run in ``out``)."""
    from pocketrec.models import EncoderConfig
    from pocketrec.train.teacher import TeacherConfig, train_teacher

    data, _ = session_data()
    cfg = TeacherConfig(dataset="ml-100k", out=str(out), train=train_config(epochs),
                        encoder=EncoderConfig(dim=16, max_len=MAX_LEN, dropout=0.0, attn_dropout=0.0))
    model, result = train_teacher(data, cfg, resume=resume)
    return _outcome(model, result)


def lightgcn_teacher(out: Path) -> dict[str, Any]:
    """LightGCN on ml-100k, 1 epoch of batches of 4096 triples (20 steps)."""
    from pocketrec.backbones.lightgcn import LightGCN, LightGCNConfig
    from pocketrec.train.teacher import TeacherConfig, train_teacher

    data = LightGCN.load_dataset("ml-100k")
    cfg = TeacherConfig(dataset="ml-100k", backbone="lightgcn", out=str(out),
                        encoder=LightGCNConfig(dim=16, layers=2), train=train_config(1, 4096))
    model, result = train_teacher(data, cfg)
    return _outcome(model, result)


def distill(teacher: Path, out: Path) -> dict[str, Any]:
    """OD-Rec from the session teacher at 10x: CE, KL, the predictive term and the recombination InfoNCE
    (whose negatives are the other rows of the global batch: gathered across ranks)."""
    from pocketrec.methods.odrec import compress_odrec

    data, _ = session_data()
    student, result = compress_odrec(teacher, data, "10x", out_dir=out, train=train_config(1),
                                     warm_start_steps=20)
    return _outcome(student, result.fit)


def distill_eodrec(teacher: Path, out: Path) -> dict[str, Any]:
    """EODRec from the session teacher at 10x: codebooks, InfoNCE in both directions, and the code refresher
    (its row gradients all-reduced before each refresh)."""
    from pocketrec.methods.eodrec import compress_eodrec
    from pocketrec.train.code_refresh import CodeRefreshConfig

    data, _ = session_data()
    student, result = compress_eodrec(teacher, data, "10x", out_dir=out, train=train_config(1), code_epochs=1,
                                      code_refresh=CodeRefreshConfig(every=4, trust=0.03))
    return _outcome(student, result.fit)


def evaluate_checkpoint(checkpoint: Path) -> dict[str, Any]:
    """The validation and test metrics of a saved session model (sharded under torch.distributed)."""
    from pocketrec.train.checkpoint import load_checkpoint

    data, _ = session_data()
    model, _ = load_checkpoint(checkpoint)
    return {split: model.evaluate(data, split, batch_size=100) for split in ("valid", "test")}


def killed_mid_epoch(out: Path, sig: int = signal.SIGKILL) -> dict[str, Any]:
    """A tiny session teacher (synthetic data: only the failure matters), whose rank 1 sends itself ``sig``
    at its third step: SIGKILL (a dead peer) or SIGSTOP (a hung one)."""
    from helpers import synthetic_dataset
    from pocketrec.models import EncoderConfig
    from pocketrec.models.session_encoder import SessionRecommender
    from pocketrec.train import distributed
    from pocketrec.train.run import run_training
    from pocketrec.train.trainer import seed_everything

    data = synthetic_dataset()

    def on_step(step: int) -> None:
        if step == 3 and distributed.rank() == 1:
            (out / "killed").write_text(str(os.getpid()))
            os.kill(os.getpid(), sig)

    seed_everything(0)
    model = SessionRecommender.build_teacher(data, EncoderConfig(dim=16, max_len=10))
    run_training(model, data, train_config(batch_size=32), out, None, {"method": "teacher"}, on_step=on_step)
    return {}


def _outcome(model: torch.nn.Module, fit: Any) -> dict[str, Any]:
    return {"weights": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "test": fit.history[-1]["test"], "valid": fit.best_valid, "best_epoch": fit.best_epoch,
            "losses": [h["train"]["loss"] for h in fit.history if "train" in h]}


def worker(rank: int, world: int, store: str, root: str, jobs: list[tuple[str, list[Any]]],
           timeout_s: float = TIMEOUT_S) -> None:
    """A spawned rank: joins the group through the file store, runs ``jobs`` (name, args) in order and
    saves their outcomes to ``root/rank-R.pt``; an error is written to ``root/error-R.txt``."""
    from pocketrec.train import distributed

    torch.set_num_threads(1)
    try:
        distributed.init(rank, world, init_method=f"file://{store}", timeout_s=timeout_s)
        outcomes = [globals()[name](*args) for name, args in jobs]
        torch.save(outcomes, Path(root) / f"rank-{rank}.pt")
    except BaseException:
        (Path(root) / f"error-{rank}.txt").write_text(traceback.format_exc())
        raise
    finally:
        distributed.shutdown()
