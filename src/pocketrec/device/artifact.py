"""The device artifact: one ``.safetensors`` file per device (write side; needs torch).

Layout of the file (read by the numpy-only :mod:`pocketrec.device.runtime`):

* ``encoder/<name>``: every session-encoder weight of :class:`SessionRecommender` (its ``state_dict``
  without the item table), float32, or float16 with ``fp16=True``;
* ``vocab/ids``: the raw item ids when they are integers (see ``vocab`` below);
* ``table/<name>``: the item table's :meth:`ItemTable.export` arrays at their stored types (uint8 codes
  stay uint8, bit-packed codes stay packed); with ``fp16=True`` its float32 arrays become float16 and the
  description's ``dtype`` says so;
* ``scoring/norms``: for cosine-scoring models (``encoder.normalize``), the L2 norm of every item row,
  float32 ``(num_items + 1,)`` (float16 with ``fp16=True``; entry 0 is 1): the runtime divides scores by
  it. Stored rather than recomputed at load, so the file holds everything the runtime keeps resident
  (disk and memory agree) and loading never rebuilds the catalogue;
* the safetensors metadata (string -> string) is the manifest: ``format`` (``pocketrec-device``),
  ``version``, ``table`` (description JSON), ``encoder`` (config JSON), ``num_items``, ``vocab`` (the raw
  ids, internal id ``i`` being ``vocab[i-1]``: ``"vocab/ids"`` when they are integers, stored as the int32/
  int64 tensor of that name, else a JSON list of strings; no id twice), ``table_bytes``, ``dataset``,
  ``checksum``: the sha256 of :func:`~pocketrec.device.runtime.artifact_checksum` over all tensors and every
  other manifest entry, and optionally ``signature``: HMAC-SHA256 of the checksum under a secret key
  (:mod:`pocketrec.device.signing`; ``export_artifact(..., key=...)``, ``pocketrec export --sign-key FILE`` or
  ``$POCKETREC_SIGNING_KEY``), which ``runtime.load(path, key=...)`` verifies.

The export refuses a model with NaN/inf weights (and, with ``fp16``, weights beyond float16's range), a
vocabulary with a duplicate id, a target that is a directory or lies inside a checkpoint folder (one that
holds ``checkpoint.json``: the export would overwrite the checkpoint's own files).

Nothing is pickled; safetensors parsing never executes code. The file is written to a temporary name next
to the target and renamed into place, so a crash never leaves half an artifact behind.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.device.np_resize import ExportedFile, write_atomically
from pocketrec.device.runtime import (
    FORMAT,
    USER_QUERY,
    VERSION,
    RawIds,
    artifact_checksum,
    non_finite,
    non_finite_message,
)
from pocketrec.device.signing import sign


def _halve(tensors: dict[str, np.ndarray], description: dict[str, Any]) -> dict[str, np.ndarray]:
    """``tensors`` with float32 arrays as float16; ``description`` (the table's) updated in place. An
    int8-codebook table is already below that: its arrays are left as they are, scales included."""
    keep_table = description.get("dtype") == "int8"
    out = {}
    for name, arr in tensors.items():
        if arr.dtype == np.float32 and not (keep_table and name.startswith("table/")):
            with np.errstate(over="ignore"):  # overflow to inf is reported by the caller's finiteness check
                arr = arr.astype(np.float16)
        out[name] = arr
    if not keep_table and "dtype" in description:
        description["dtype"] = "float16"
    return out


def check_target(path: str | Path) -> Path:
    """``path`` as a :class:`Path`, refused (``ValueError``) when it is a directory or lies inside a checkpoint
    folder (any ancestor holding ``checkpoint.json``), where an export would overwrite the checkpoint."""
    from pocketrec.train.checkpoint import META_FILE

    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the output file's name (e.g. {path / 'model.safetensors'})")
    for folder in path.resolve().parents:
        if (folder / META_FILE).is_file():
            raise ValueError(f"{path} is inside the checkpoint folder {folder}; write the export outside it")
    return path


def build_artifact(model: Any, vocab: list[str] | None = None, fp16: bool = False, dataset: str = "",
                   users: Sequence[tuple[str, int]] | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and manifest of the artifact of ``model`` (a :class:`~pocketrec.backbones.base.Recommender`).

    ``users`` (raw id, internal id) pairs: the users a collaborative-filtering artifact serves (their
    vectors and the items each has; the model must be attached to its data). Raises ``ValueError`` for a
    vocabulary of the wrong length or with a duplicate id, and for NaN/inf weights (or weights that
    overflow float16 with ``fp16``).
    """
    table = model.device_table()
    vocab = [str(v) for v in vocab] if vocab is not None else [str(i) for i in range(1, table.num_items + 1)]
    if len(vocab) != table.num_items:
        raise ValueError(f"vocabulary has {len(vocab)} ids but the item table has {table.num_items} items")
    duplicate = RawIds(vocab).duplicate()
    if duplicate is not None:
        raise ValueError(f"item id {duplicate!r} appears more than once in the vocabulary")
    arrays, description = table.export()
    description = dict(description)
    # the table first: a non-finite weight there is named before what was computed from it (norms)
    tensors = {f"table/{name}": np.ascontiguousarray(arr) for name, arr in arrays.items()}
    tensors.update(model.device_tensors([i for _, i in users]) if users is not None else model.device_tensors())
    vocab_value, vocab_ids = RawIds.encode(vocab)
    if vocab_ids is not None:
        tensors[RawIds.TENSOR] = vocab_ids
    bad = non_finite(tensors)
    if bad:
        raise ValueError(non_finite_message(bad))
    if fp16:
        tensors = _halve(tensors, description)
        bad = non_finite(tensors)
        if bad:
            raise ValueError(non_finite_message(bad, "weights beyond float16's range (±65504): export without --fp16"))
    table_tensors = {name: arr for name, arr in tensors.items() if name.startswith("table/")}
    manifest = {
        "format": FORMAT,
        "version": str(VERSION),
        "table": json.dumps(description),
        "backbone": model.backbone,
        "device_query": model.device_query,
        **({"users": json.dumps([str(raw) for raw, _ in users])} if users is not None else {}),
        "encoder": json.dumps(dataclasses.asdict(model.config)),
        "num_items": str(table.num_items),
        "vocab": vocab_value,
        "table_bytes": str(sum(a.nbytes for a in table_tensors.values())),
        "dataset": str(dataset),
    }
    manifest["checksum"] = artifact_checksum(tensors, manifest)
    return tensors, manifest


def export_artifact(checkpoint_or_model: Any, path: str | Path, fp16: bool = False,
                    vocab: list[str] | None = None, dataset: str | None = None,
                    key: bytes | None = None, users: Sequence[str] | None = None, data: Any = None
                    ) -> ExportedFile:
    """Write the device artifact of a checkpoint folder (or a model) to ``path``; returns ``path`` (with
    ``nbytes``, the size written).

    With a checkpoint the vocabulary and dataset name come from its ``checkpoint.json``; with a model pass
    ``vocab`` (raw ids of items ``1..n``), or the raw ids are the internal ids ``"1".."n"``. With ``key``
    (bytes, not empty) the manifest also holds the checksum's ``signature``. Refused (``ValueError``, nothing
    written): see the module docstring.

    A collaborative-filtering model (LightGCN) ranks for given users: ``users`` are their raw ids (at least
    one; ``["all"]`` for every user) and ``data`` its :class:`~pocketrec.data.interactions.InteractionDataset`
    (loaded from the checkpoint's record when not given): the propagated vectors need the training graph.
    ``users=[]`` writes the item table alone, with no user (the shared file of every device of one budget).
    """
    from safetensors.numpy import save_file

    path = check_target(path)
    if key is not None and not key:
        raise ValueError("the signing key is empty")
    model, vocab, dataset, meta = resolve_model(checkpoint_or_model, vocab, dataset)
    chosen = chosen_users(model, meta, users, data)
    tensors, manifest = build_artifact(model, vocab, fp16, dataset or "", chosen)
    if key is not None:
        manifest["signature"] = sign(manifest["checksum"], key)
    return write_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=manifest))


def resolve_model(checkpoint_or_model: Any, vocab: list[str] | None, dataset: str | None
                  ) -> tuple[Any, list[str] | None, str | None, dict[str, Any]]:
    """A model with its vocabulary, dataset name and checkpoint meta (``{}`` for a model as given), from a
    checkpoint folder or a model."""
    if not isinstance(checkpoint_or_model, (str, Path)):
        return checkpoint_or_model, vocab, dataset, {}
    from pocketrec.train.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint_or_model)
    vocab = vocab if vocab is not None else meta.get("vocab")
    dataset = dataset if dataset is not None else str(meta.get("dataset", ""))
    return model, vocab, dataset, meta


def chosen_users(model: Any, meta: dict[str, Any], users: Sequence[str] | None, data: Any
                  ) -> list[tuple[str, int]] | None:
    """(raw, internal) ids of the users a collaborative-filtering artifact is for (``data`` attached to the
    model); ``None`` for a session model, which serves any user and takes none."""
    if model.device_query != USER_QUERY:
        if users:
            raise ValueError("a session model's file serves any user: it takes no users")
        return None
    if users is None:
        raise ValueError("a LightGCN artifact is for the device of given users: pass --user U (several: "
                         "U1,U2; every user: all)")
    if not users:  # the item table alone: a device that gets its user's vector another way
        return []
    if data is None:
        if not meta:
            raise ValueError("exporting a collaborative-filtering model needs its data (data=...)")
        from pocketrec.train.compat import load_dataset_of

        data = load_dataset_of(meta, None, what="the checkpoint")
    model.attach(data)
    if list(users) == ["all"]:
        return [(raw, i) for i, raw in enumerate(data.users.raw_ids, start=1)]
    unknown = [str(u) for u in users if data.users.get(u) is None]
    if unknown:
        raise ValueError(f"user {unknown[0]!r} is not a user of {data.name} ({data.num_users:,} users)")
    return [(str(u), data.users.encode(u)) for u in dict.fromkeys(str(u) for u in users)]
