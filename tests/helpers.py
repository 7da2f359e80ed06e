"""Small realistic data and models for tests that must not need the shared data folder."""

from __future__ import annotations

import numpy as np

from pocketrec.data.dataset import Dataset, SequenceSplit, Vocabulary
from pocketrec.models import EncoderConfig
from pocketrec.train.teacher import TeacherConfig
from pocketrec.train.trainer import TrainConfig


def synthetic_sessions(num_items: int = 60, num_sessions: int = 600, seed: int = 0) -> list[np.ndarray]:
    """Sessions that walk the catalogue: after item i comes i+1 (or i+2) mod num_items, with noise.

    A model that learns the transition recovers the next item far above chance, so the tests can
    assert that training really learns.
    """
    rng = np.random.default_rng(seed)
    sessions = []
    for _ in range(num_sessions):
        length = int(rng.integers(2, 9))
        item = int(rng.integers(1, num_items + 1))
        seq = [item]
        for _ in range(length - 1):
            step = 1 if rng.random() < 0.8 else 2
            if rng.random() < 0.1:
                item = int(rng.integers(1, num_items + 1))
            else:
                item = (item - 1 + step) % num_items + 1
            seq.append(item)
        sessions.append(np.array(seq, dtype=np.int64))
    return sessions


def synthetic_dataset(num_items: int = 60, num_sessions: int = 600, seed: int = 0) -> Dataset:
    sessions = synthetic_sessions(num_items, num_sessions, seed)
    n_test = num_sessions // 10
    train, test = sessions[:-n_test], sessions[-n_test:]
    cut = int(len(train) * 0.9)
    return Dataset(name="synthetic", protocol="session", vocab=Vocabulary([f"i{i}" for i in range(1, num_items + 1)]),
                   train=SequenceSplit.all_prefixes(train[:cut]), valid=SequenceSplit.all_prefixes(train[cut:]),
                   test=SequenceSplit.all_prefixes(test))


def tiny_teacher_config(out: object = "", epochs: int = 4, seed: int = 7) -> TeacherConfig:
    """A teacher small enough to train on :func:`synthetic_dataset` in about a second per epoch."""
    return TeacherConfig(dataset="synthetic", out=str(out),
                         encoder=EncoderConfig(dim=16, max_len=10, dropout=0.1, attn_dropout=0.1),
                         train=TrainConfig(epochs=epochs, batch_size=32, lr=5e-3, seed=seed, progress=False,
                                           patience=10))


def student_train_config(epochs: int = 2) -> TrainConfig:
    """The schedule of the tiny students distilled from ``tiny_teacher_config`` teachers."""
    return TrainConfig(epochs=epochs, batch_size=32, lr=5e-3, seed=7, progress=False, patience=10)


#: a small LightGCN teacher of :func:`synthetic_interactions` (``load_teacher_config`` overrides; add ``out=``)
CF_TEACHER = ["backbone=lightgcn", "dataset=synthetic-cf", "encoder.dim=16", "encoder.layers=2", "train.lr=0.01",
              "train.batch_size=256", "train.epochs=4", "train.patience=4", "train.progress=false"]
#: a small RULE model of that teacher (``rule`` config overrides; add ``teacher=`` and ``out=``)
CF_RULE = ["num_blocks=4", "num_groups=5", "train.epochs=2", "train.batch_size=512", "train.lr=0.01",
           "train.progress=false", "label_archs=40", "label_users=100"]

#: a small PEEL refinement of that RULE model (``peel`` config overrides; add ``teacher=`` and ``out=``)
CF_PEEL = ["user_groups=3", "train.epochs=3", "train.batch_size=128", "train.lr=0.01", "train.patience=3",
           "train.progress=false"]


def train_cf_runs(data, root, dataset: str | None = None) -> tuple[object, object]:
    """A LightGCN teacher, its RULE model and their PEEL refinement on ``data`` under ``root``:
    ``(RULE run folder, PEEL run folder)``. ``dataset``: the name or path the runs record for their data (a
    path lets another process load it)."""
    from pocketrec.methods import registry
    from pocketrec.train.teacher import load_teacher_config, train_teacher

    named = [f"dataset={dataset}"] if dataset else []
    train_teacher(data, load_teacher_config(None, [*CF_TEACHER, *named, f"out={root / 'teacher'}"]))
    runs = []
    for method, overrides, teacher in (("rule", CF_RULE, root / "teacher" / "best"), ("peel", CF_PEEL, root / "rule")):
        spec = registry.get_method(method)
        spec.compress(spec.load_config(None, [*overrides, f"teacher={teacher}", f"out={root / method}"]), data)
        runs.append(root / method)
    return runs[0], runs[1]


def synthetic_interactions(num_users: int = 150, num_items: int = 60, clusters: int = 4, per_user: int = 12,
                           seed: int = 0):
    """An :class:`~pocketrec.data.interactions.InteractionDataset` where users of cluster ``c`` mostly like
    the items of cluster ``c`` (10% noise), split 80/10/10 per user: a CF model must learn the clusters."""
    from pocketrec.data.interactions import split_interactions
    from pocketrec.data.readers import Interactions

    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(1, num_users + 1):
        cluster = user % clusters
        own = np.arange(1, num_items + 1)[np.arange(num_items) % clusters == cluster]
        picks = set(rng.choice(own, size=min(per_user, len(own)), replace=False).tolist())
        picks |= set(rng.integers(1, num_items + 1, size=max(1, per_user // 10)).tolist())
        users += [f"u{user}"] * len(picks)
        items += [f"i{i}" for i in sorted(picks)]
    rows = Interactions(users=users, items=items, timestamps=np.arange(len(users)), ratings=None,
                        source="synthetic interactions")
    return split_interactions("synthetic-cf", rows, seed=seed)


def one_line_error(result) -> str:
    """The output of a CLI run (typer's ``CliRunner``) that failed as bad input: exit code 2, one ``error:`` line,
    no traceback; returned with its whitespace collapsed."""
    text = " ".join(result.output.split())
    assert result.exit_code == 2 and text.startswith("error:") and "Traceback" not in result.output, result.output
    return text


def cli_on(data, monkeypatch):
    """A ``CliRunner`` whose dataset loader returns ``data`` whatever the name (a synthetic dataset by name)."""
    from typer.testing import CliRunner

    monkeypatch.setattr("pocketrec.data.registry.load_interactions", lambda name: data)
    return CliRunner()
