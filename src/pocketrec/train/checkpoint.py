"""Checkpoints: a folder with ``model.safetensors`` and ``checkpoint.json``; nothing pickled.

``model.safetensors`` holds the recommender's ``state_dict`` (float32, as trained);
``checkpoint.json`` holds everything needed to rebuild it and to trust it: format version, encoder
config, item-table description, the vocabulary back to the user's ids, dataset name and fingerprint,
epoch, metrics and the training config. ``optimizer.safetensors`` (optional) makes training
resumable. A checkpoint is written to a temporary folder and renamed into place, so a crash never
leaves half a checkpoint behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pocketrec.models.session_encoder import EncoderConfig, SessionRecommender
from pocketrec.tables.base import TABLE_KINDS

FORMAT = "pocketrec-checkpoint"
VERSION = 1
MODEL_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
OPTIMIZER_FILE = "optimizer.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or does not fit what it is used for."""


def save_checkpoint(path: str | Path, model: SessionRecommender, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write ``model`` and ``meta`` to the folder ``path`` atomically; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _, description = model.table.export()
    full_meta = {
        "format": FORMAT,
        "version": VERSION,
        "encoder": model.config.to_dict(),
        "table": description,
        "table_nbytes": model.table.nbytes(),
        **meta,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
        if optimizer is not None:
            tensors, metadata = _flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata=metadata)
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=1))
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON part of a checkpoint, validated."""
    path = Path(path)
    meta_file = path / META_FILE
    if not path.is_dir() or not meta_file.is_file():
        raise CheckpointError(f"{path}: not a pocketrec checkpoint (expected a folder with {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_file}: damaged ({err})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: not a pocketrec checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{meta_file}: checkpoint version {meta.get('version')} is not supported "
                              f"(this pocketrec reads version {VERSION})")
    return meta


def load_checkpoint(path: str | Path) -> tuple[SessionRecommender, dict[str, Any]]:
    """Rebuild the recommender saved at ``path``; returns ``(model, meta)`` with the model in eval mode."""
    path = Path(path)
    meta = read_meta(path)
    kind = meta["table"].get("kind")
    if kind not in TABLE_KINDS:
        raise CheckpointError(f"{path}: unknown item-table kind {kind!r}")
    table = TABLE_KINDS[kind].from_description(meta["table"])
    model = SessionRecommender(EncoderConfig(**meta["encoder"]), table)
    try:
        state = load_file(str(path / MODEL_FILE))
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path / MODEL_FILE}: cannot read ({err})") from None
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
    model.eval()
    return model, meta


def load_optimizer_state(path: str | Path, optimizer: torch.optim.Optimizer) -> bool:
    """Load the optimizer state saved next to a checkpoint; False if there is none."""
    file = Path(path) / OPTIMIZER_FILE
    if not file.is_file():
        return False
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        groups = json.loads(f.metadata()["param_groups"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        idx, name = key.split("/", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return True


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    sd = optimizer.state_dict()
    tensors = {}
    for idx, entries in sd["state"].items():
        for name, value in entries.items():
            tensors[f"{idx}/{name}"] = torch.as_tensor(value).detach().clone().contiguous()
    return tensors, {"param_groups": json.dumps(sd["param_groups"])}


def copy_weights(source: nn.Module, target: nn.Module, skip_prefix: str = "table.") -> list[str]:
    """Copy matching parameters (same name and shape) except those under ``skip_prefix``; returns names."""
    target_state = target.state_dict()
    copied = []
    for name, value in source.state_dict().items():
        if name.startswith(skip_prefix) or name not in target_state:
            continue
        if target_state[name].shape == value.shape:
            target_state[name].copy_(value)
            copied.append(name)
    return copied
