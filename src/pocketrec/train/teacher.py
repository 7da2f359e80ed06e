"""Train a teacher: a backbone (any registered one) with a dense item table, on its own training loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketrec.backbones.base import DEFAULT_BACKBONE, Recommender, backbone_class
from pocketrec.config import ConfigError, load_config, read_yaml, split_override
from pocketrec.train.run import dataset_meta, run_training
from pocketrec.train.trainer import FitResult, TrainConfig, seed_everything


def _default_encoder() -> Any:
    return backbone_class(DEFAULT_BACKBONE).config_class()


@dataclass
class TeacherConfig:
    """Everything ``pocketrec train`` reads: dataset, backbone and its shape, training schedule, output folder.

    ``encoder`` is the config of ``backbone`` (``--encoder.dim=64`` whatever the backbone); build it with
    :func:`load_teacher_config`, which reads the backbone first.
    """

    dataset: str = "ml-100k"
    out: str = ""
    backbone: str = DEFAULT_BACKBONE
    encoder: Any = field(default_factory=_default_encoder)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        cls = backbone_class(self.backbone)
        if not isinstance(self.encoder, cls.config_class):
            raise ValueError(f"encoder is a {type(self.encoder).__name__}, but backbone {self.backbone!r} "
                             f"takes a {cls.config_class.__name__}")


def load_teacher_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TeacherConfig:
    """:func:`~pocketrec.config.load_config` for :class:`TeacherConfig`, with the ``encoder`` section read as
    the config of the backbone that the YAML file or an override (``backbone=lightgcn``) names, and the
    ``train`` section starting from that backbone's ``train_defaults``."""
    name = DEFAULT_BACKBONE
    if path is not None and Path(path).is_file():
        name = str(read_yaml(Path(path)).get("backbone", name))
    for text in overrides or []:
        key, value = split_override(text)
        if key == "backbone":
            name = value
    try:
        cls = backbone_class(name)
    except ValueError as err:
        raise ConfigError(f"backbone: {err}") from None
    base = TeacherConfig(backbone=name, encoder=cls.config_class(), train=TrainConfig(**cls.train_defaults))
    return load_config(TeacherConfig, path, overrides, base=base)


def build_teacher(dataset: Any, config: TeacherConfig) -> Recommender:
    """The untrained dense-table model of ``config.backbone`` for ``dataset``, seeded with ``config.train.seed``."""
    seed_everything(config.train.seed)
    return backbone_class(config.backbone).build_teacher(dataset, config.encoder)


def train_teacher(dataset: Any, config: TeacherConfig, resume: bool = False) -> tuple[Recommender, FitResult]:
    """Train a dense teacher on ``dataset``; returns the best-on-validation model and the fit record."""
    model = build_teacher(dataset, config)
    meta = {**dataset_meta(dataset), "method": "teacher"}
    result = run_training(model, dataset, config.train, config.out or None, None, meta, resume=resume)
    return model, result


def final_test_metrics(result: FitResult) -> dict[str, float]:
    return result.history[-1]["test"]
