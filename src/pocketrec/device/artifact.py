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
  int64 tensor of that name, else a JSON list of strings), ``table_nbytes``, ``dataset`` and ``checksum``: the
  sha256 of :func:`tensor_checksum` over all tensors.

Nothing is pickled; safetensors parsing never executes code. The file is written to a temporary name next
to the target and renamed into place, so a crash never leaves half an artifact behind.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.device.runtime import FORMAT, NORMS, VERSION, RawIds, tensor_checksum


def _encoder_arrays(model: Any, fp16: bool) -> dict[str, np.ndarray]:
    dtype = np.float16 if fp16 else np.float32
    out = {}
    for name, value in model.state_dict().items():
        if name.startswith("table."):
            continue
        arr = value.detach().cpu().numpy()
        if np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(dtype)
        out[f"encoder/{name}"] = np.ascontiguousarray(arr)
    return out


def _table_arrays(table: Any, fp16: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The table's exported arrays under ``table/``; ``fp16`` halves a float table's float32 weights (an
    int8-codebook table is already below that: it is left as it is, scales included)."""
    arrays, description = table.export()
    description = dict(description)
    fp16 = fp16 and description.get("dtype") != "int8"
    out = {}
    for name, arr in arrays.items():
        if fp16 and arr.dtype == np.float32:
            arr = arr.astype(np.float16)
        out[f"table/{name}"] = np.ascontiguousarray(arr)
    if fp16 and "dtype" in description:
        description["dtype"] = "float16"
    return out, description


def build_artifact(model: Any, vocab: list[str] | None = None, fp16: bool = False,
                   dataset: str = "") -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and manifest of the artifact of ``model`` (a :class:`SessionRecommender`)."""
    table = model.table
    vocab = [str(v) for v in vocab] if vocab is not None else [str(i) for i in range(1, table.num_items + 1)]
    if len(vocab) != table.num_items:
        raise ValueError(f"vocabulary has {len(vocab)} ids but the item table has {table.num_items} items")
    tensors = _encoder_arrays(model, fp16)
    vocab_value, vocab_ids = RawIds.encode(vocab)
    if vocab_ids is not None:
        tensors[RawIds.TENSOR] = vocab_ids
    table_tensors, description = _table_arrays(table, fp16)
    tensors.update(table_tensors)
    if model.config.normalize:
        import torch

        with torch.no_grad():
            norms = model.item_norms().detach().cpu().numpy()
            tensors[NORMS] = np.ascontiguousarray(norms.astype(np.float16 if fp16 else np.float32))
    manifest = {
        "format": FORMAT,
        "version": str(VERSION),
        "table": json.dumps(description),
        "encoder": json.dumps(model.config.to_dict()),
        "num_items": str(table.num_items),
        "vocab": vocab_value,
        "table_nbytes": str(sum(a.nbytes for a in table_tensors.values())),
        "dataset": str(dataset),
        "checksum": tensor_checksum(tensors),
    }
    return tensors, manifest


def export_artifact(checkpoint_or_model: Any, path: str | Path, fp16: bool = False,
                    vocab: list[str] | None = None, dataset: str | None = None) -> Path:
    """Write the device artifact of a checkpoint folder (or a model) to ``path``; returns ``path``.

    With a checkpoint the vocabulary and dataset name come from its ``checkpoint.json``; with a model pass
    ``vocab`` (raw ids of items ``1..n``), or the raw ids are the internal ids ``"1".."n"``.
    """
    from safetensors.numpy import save_file

    model, vocab, dataset = resolve_model(checkpoint_or_model, vocab, dataset)
    tensors, manifest = build_artifact(model, vocab, fp16, dataset or "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=manifest)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve_model(checkpoint_or_model: Any, vocab: list[str] | None, dataset: str | None
                  ) -> tuple[Any, list[str] | None, str | None]:
    """A model with its vocabulary and dataset name, from a checkpoint folder or a model as given."""
    if not isinstance(checkpoint_or_model, (str, Path)):
        return checkpoint_or_model, vocab, dataset
    from pocketrec.train.checkpoint import load_checkpoint

    model, meta = load_checkpoint(checkpoint_or_model)
    vocab = vocab if vocab is not None else meta.get("vocab")
    dataset = dataset if dataset is not None else str(meta.get("dataset", ""))
    return model, vocab, dataset
