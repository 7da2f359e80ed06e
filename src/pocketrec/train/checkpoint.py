"""Checkpoints: a folder with ``model.safetensors`` and ``checkpoint.json``; nothing pickled.

``model.safetensors`` holds the recommender's ``state_dict`` (float32, as trained);
``checkpoint.json`` holds everything needed to rebuild it and to trust it: format version, encoder
config, item-table description, the vocabulary back to the user's ids, dataset name and fingerprint,
epoch, metrics and the training config. ``optimizer.safetensors`` (optional) makes training
resumable. A checkpoint is written to a temporary folder and renamed into place, so a crash never
leaves half a checkpoint behind; a crash between the two renames that replace an existing folder is
repaired by the next read or save (:func:`restore_interrupted_save`).

Version 2 stores ``checksum = {"meta": sha256, "model": sha256}`` in ``checkpoint.json``: ``meta`` over
the canonical JSON (sorted keys, compact) of every other key, ``model`` over the bytes of
``model.safetensors``. :func:`read_meta` verifies the first, every weight load the second.
``optimizer.safetensors`` is not covered: it only steers a resumed run, and a damaged one fails to load
on its own. Version-1 checkpoints (no checksum) are still read, unverified.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file
from torch import nn

from pocketrec.backbones.base import DEFAULT_BACKBONE, Recommender, backbone_class
from pocketrec.config import ConfigError, load_config
from pocketrec.tables.base import TABLE_KINDS, ItemTable

FORMAT = "pocketrec-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MODEL_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
OPTIMIZER_FILE = "optimizer.safetensors"


class CheckpointError(ValueError):
    """A checkpoint that is missing, damaged, or does not fit what it is used for."""


#: Keys ``checkpoint.json`` must have, and the JSON type of those that code reads (when present).
REQUIRED_KEYS = ("encoder", "table", "table_bytes")
KEY_TYPES: dict[str, type] = {"backbone": str, "encoder": dict, "table": dict, "table_bytes": int, "num_items": int,
                              "dataset": str, "vocab": list, "vocab_fingerprint": str, "epoch": int,
                              "valid": dict, "test": dict, "trainer_state": dict, "history": list,
                              "checksum": dict}
_JSON_NAMES = {dict: "an object", list: "a list", int: "an integer", str: "a string"}


def _aside(path: Path) -> Path:
    """Where :func:`save_checkpoint` parks the previous checkpoint while it moves the new one in."""
    return path.with_name(f".{path.name}.old")


def restore_interrupted_save(path: str | Path) -> bool:
    """Repair a save killed between its two renames: ``path`` is gone but the complete previous
    checkpoint sits at ``.NAME.old``; rename it back. Returns True if it did."""
    path = Path(path)
    old = _aside(path)
    if path.exists() or not (old / META_FILE).is_file() or not (old / MODEL_FILE).is_file():
        return False
    try:
        os.replace(old, path)
    except OSError:  # e.g. a read-only folder: the caller then reports the missing checkpoint
        return False
    return True


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _meta_checksum(meta: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``meta`` without its ``checksum`` key."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def save_checkpoint(path: str | Path, model: Recommender, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write ``model`` and ``meta`` to the folder ``path`` atomically; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    restore_interrupted_save(path)
    _, description = model.table.export()
    full_meta = {
        "format": FORMAT,
        "version": VERSION,
        "backbone": model.backbone,
        "encoder": dataclasses.asdict(model.config),
        "table": description,
        "table_bytes": model.table.nbytes(),
        **model.checkpoint_meta(),
        **meta,
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": FORMAT})
        if optimizer is not None:
            tensors, metadata = _flatten_optimizer(optimizer)
            save_file(tensors, str(tmp / OPTIMIZER_FILE), metadata=metadata)
        full_meta = json.loads(json.dumps(full_meta))  # hash what a reader will see (tuples, int keys)
        full_meta["checksum"] = {"meta": _meta_checksum(full_meta),
                                 "model": _sha256((tmp / MODEL_FILE).read_bytes())}
        (tmp / META_FILE).write_text(json.dumps(full_meta, indent=1))
        if path.exists():
            old = _aside(path)
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
    """The JSON part of a checkpoint, validated (keys, their types, and the version-2 checksum)."""
    path = Path(path)
    restore_interrupted_save(path)
    meta_file = path / META_FILE
    if not path.is_dir() or not meta_file.is_file():
        raise CheckpointError(f"{path}: not a pocketrec checkpoint (expected a folder with {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{meta_file}: damaged ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_file}: not a pocketrec checkpoint")
    version = meta.get("version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        raise CheckpointError(f"{meta_file}: checkpoint version {version} is not supported "
                              f"(this pocketrec reads versions {', '.join(map(str, READABLE_VERSIONS))})")
    raw = dict(meta)  # as written: what the checksum covers
    if "table_nbytes" in meta and "table_bytes" not in meta:  # the key's name before 2026-12
        meta["table_bytes"] = meta.pop("table_nbytes")
    required = (*REQUIRED_KEYS, "checksum") if version >= 2 else REQUIRED_KEYS
    for key in required:
        if key not in meta:
            raise CheckpointError(f"{meta_file}: missing key {key!r}")
    for key, kind in KEY_TYPES.items():
        value = meta.get(key)
        if key in meta and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
            raise CheckpointError(f"{meta_file}: key {key!r} should be {_JSON_NAMES[kind]}, "
                                  f"got {json.dumps(value)[:60]}")
    if version >= 2 and meta["checksum"].get("meta") != _meta_checksum(raw):
        raise CheckpointError(f"{path}: checksum mismatch, the checkpoint was modified or damaged")
    return meta


def read_weights(path: str | Path, meta: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The ``state_dict`` in ``model.safetensors``, checksum verified (version 2); ``meta`` as read by
    :func:`read_meta` (read here when not given)."""
    path = Path(path)
    meta = read_meta(path) if meta is None else meta
    file = path / MODEL_FILE
    try:
        data = file.read_bytes()
        state = load(data)
    except Exception as err:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{file}: cannot read ({err})") from None
    if meta["version"] >= 2 and meta["checksum"].get("model") != _sha256(data):
        raise CheckpointError(f"{path}: checksum mismatch, the checkpoint was modified or damaged")
    return state


def load_checkpoint(path: str | Path) -> tuple[Recommender, dict[str, Any]]:
    """Rebuild the recommender saved at ``path`` (its backbone found by name, :mod:`pocketrec.backbones`);
    returns ``(model, meta)`` with the model in eval mode."""
    path = Path(path)
    meta = read_meta(path)
    cls = checkpoint_backbone(path, meta)
    table = _table(path, meta["table"])
    config = _encoder_config(path, meta["encoder"], cls.config_class)
    try:
        model = cls.from_checkpoint(config, table, meta)
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path / META_FILE}: {err}") from None
    state = read_weights(path, meta)
    problem = _misfit(state, model)
    if problem:
        raise CheckpointError(f"{path}: weights do not fit the model ({problem})")
    model.load_state_dict(state)
    model.eval()
    return model, meta


def load_weights_into(path: str | Path, model: nn.Module) -> dict[str, Any]:
    """Load the weights of the checkpoint at ``path`` into ``model``, built by this run (``--resume``).

    Checksum verified. If the names or shapes differ (the run's ``--encoder`` settings are not the
    saved ones) it raises one :class:`CheckpointError` line saying which setting differs, instead of
    ``load_state_dict``'s multi-line RuntimeError. Returns the checkpoint's meta.
    """
    path = Path(path)
    meta = read_meta(path)
    state = read_weights(path, meta)
    problem = _misfit(state, model)
    if problem:
        config = getattr(model, "config", None)
        ours = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else {}
        saved = meta["encoder"]
        diffs = [f"saved encoder {k} {saved[k]}, this run's {ours[k]}" for k in ours
                 if k in saved and saved[k] != ours[k]]
        if diffs:
            problem = "; ".join([*diffs, "resume with the same --encoder settings"])
        raise CheckpointError(f"{path}: weights do not fit this model ({problem})")
    model.load_state_dict(state)
    return meta


def _misfit(state: dict[str, torch.Tensor], model: nn.Module) -> str | None:
    """Why ``state`` cannot be loaded into ``model`` (names or shapes), or None."""
    current = model.state_dict()
    missing = [k for k in current if k not in state]
    unexpected = [k for k in state if k not in current]
    if missing or unexpected:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    for name, value in state.items():
        if value.shape != current[name].shape:
            return f"{name} saved {tuple(value.shape)}, this model's {tuple(current[name].shape)}"
    return None


def _table(path: Path, description: dict[str, Any]) -> ItemTable:
    kind = description.get("kind")
    if not isinstance(kind, str) or kind not in TABLE_KINDS:
        raise CheckpointError(f"{path}: unknown item-table kind {kind!r}")
    try:
        return TABLE_KINDS[kind].from_description(description)
    except KeyError as err:
        raise CheckpointError(f"{path / META_FILE}: item table description lacks key {err}") from None
    except (TypeError, ValueError, OverflowError, RuntimeError) as err:
        raise CheckpointError(f"{path / META_FILE}: bad item table description ({err})") from None


def checkpoint_backbone(path: str | Path, meta: dict[str, Any]) -> type[Recommender]:
    """The :class:`Recommender` class of a checkpoint's ``backbone`` (``session`` when it names none)."""
    try:
        return backbone_class(meta.get("backbone", DEFAULT_BACKBONE))
    except ValueError as err:
        raise CheckpointError(f"{Path(path) / META_FILE}: written by a newer pocketrec? {err}") from None


def _encoder_config(path: Path, data: dict[str, Any], config_class: type) -> Any:
    """The saved encoder (backbone) config, converted and validated like a YAML section; keys it does not
    have keep their defaults (older versions), keys this version does not know are refused (newer ones)."""
    known = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise CheckpointError(f"{path / META_FILE}: written by a newer pocketrec? unknown encoder key "
                              f"{unknown[0]!r}")
    try:
        return load_config(config_class, None, data)
    except ConfigError as err:
        # every EncoderConfig message starts with the field's name
        raise CheckpointError(f"{path / META_FILE}: encoder.{err}") from None


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
