"""Dynamic budgets on the device: shrink an elastic artifact in place, grow it back with a delta (numpy only).

An elastic item table (RULE, PEEL; :mod:`pocketrec.formats.elastic_arrays`) exported with a *block priority*
(the ``table/priority`` array: every ``(group, block)`` pair, highest first) can change its budget on the device,
with no server and no torch (this module is numpy only, as its ``np_`` name says: the runtime may import it):

* **shrink** (:func:`shrink_tensors`, :meth:`DeviceModel.shrink <pocketrec.device.runtime.DeviceModel.shrink>`):
  the architecture of the new item-table budget is recomputed from the stored priority by
  :func:`~pocketrec.formats.elastic_arrays.select_by_priority`, the very rule of the direct build
  (:meth:`ElasticTable.priority_architecture <pocketrec.tables.elastic.ElasticTable.priority_architecture>`), and
  the blocks it no longer keeps are cut out of each group's matrix (new, smaller arrays: the old ones are
  released). int8 scales are per ``(group, block)``, so the kept blocks stay bit-identical. The result has the
  same tensors and manifest (hence the same checksum) as the artifact built directly for that budget.
  The selection is nested in the budget, so a shrink only ever drops blocks; a budget whose architecture
  needs a block the artifact lacks is refused (grow it instead).
* **grow** (:func:`apply_delta`, :meth:`DeviceModel.grow <pocketrec.device.runtime.DeviceModel.grow>`): a
  :class:`Delta`, made by the server from the larger and the smaller artifact (:func:`make_delta`), holds only
  what the smaller one lacks. It is refused unless its ``base_checksum`` is the artifact's checksum ("made for
  another artifact"), and the grown artifact must have the delta's ``target_checksum``, or nothing changes.

Budgets are *item-table* bytes (the manifest's ``table_bytes``; the priority array counts), as everywhere in
pocketrec. Artifacts whose scores depend on the table elsewhere are refused: a cosine-scoring artifact stores
item norms (``scoring/norms``) computed from the kept blocks.

Delta file (``.safetensors``, written by :func:`write_safetensors`):

* ``mask``: the *target* architecture, bit-packed as the table's ``mask``;
* ``blocks/{g}`` for every group ``g`` that gains blocks: ``(n_g, |A_g| * b)`` at the table's stored dtype, the
  added blocks ``A_g`` in increasing block index (the rows in the table's order: items by increasing id);
* ``scales`` (int8 tables that gain blocks): float32, the scale of every added ``(group, block)`` in C order;
* metadata: ``format`` (``pocketrec-delta``), ``version`` (1), ``base_checksum`` and ``target_checksum`` (the
  artifacts' checksums), ``target_table_bytes``, ``changes`` (JSON: the target's manifest entries that differ
  from the base's, ``table_bytes`` among them), optionally ``target_signature`` (the server's signature of the
  target, copied from the larger artifact when it is signed) and ``checksum``: :func:`artifact_checksum` of the
  delta itself, so a damaged delta is named as such before anything is applied.

Signatures: a signature is of one checksum, so a shrunk artifact is **unsigned**: its ``signature`` entry is
removed (unless the shrink dropped nothing); re-sign it with a key: ``save(path, key=...)``, ``pocketrec resize
--sign-key``. A grown artifact carries the delta's ``target_signature`` when the delta has one (the larger
artifact's own signature, valid since the grown artifact has its checksum), else it is unsigned too.

The selection prices blocks at the artifact's stored dtype: build directly at the table's own ``dtype``
(``ElasticTable(dtype="float16")``), not by halving a float32 table at export (``fp16=True``), whose
architecture the torch side would price at float32.

File bytes: :func:`write_safetensors` writes a canonical file (metadata keys sorted, tensors by name), so
equal tensors and manifests give equal bytes. (safetensors' own writer emits the metadata in hash-map order,
which differs from one call to the next: :func:`~pocketrec.device.artifact.export_artifact`'s files have equal
content and checksums, not equal bytes.)
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.device.runtime import (
    NORMS,
    artifact_checksum,
    non_finite,
    non_finite_message,
    read_artifact,
    read_safetensors,
)
from pocketrec.device.signing import sign, signature_matches
from pocketrec.formats.elastic_arrays import (
    decode_mask,
    elastic_groups,
    elastic_layout,
    elastic_priority,
    encode_mask,
    select_by_priority,
)

DELTA_FORMAT = "pocketrec-delta"
DELTA_VERSION = 1
TABLE = "table/"
#: manifest entries that a resize recomputes (or drops) rather than carries over
_DERIVED = ("checksum", "signature", "table_bytes")
_SAFETENSORS_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
                       "int16": "I16", "int8": "I8", "uint8": "U8", "uint16": "U16", "uint32": "U32",
                       "uint64": "U64", "bool": "BOOL"}


class DeltaError(ValueError):
    """A delta file that is missing, damaged, not a delta, or not for this artifact."""


# ------------------------------------------------------------------------------------------- files


def write_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> None:
    """Write a ``.safetensors`` file with canonical bytes: the header is compact JSON with ``__metadata__``
    (keys sorted) first, then the tensors in name order, padded with spaces to a multiple of 8 bytes; the
    data follow in the same order, little-endian. Any safetensors reader reads it."""
    header: dict[str, Any] = {"__metadata__": {str(k): str(metadata[k]) for k in sorted(metadata)}}
    arrays, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if arr.dtype.name not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name!r} has dtype {arr.dtype}, which safetensors does not store")
        header[name] = {"dtype": _SAFETENSORS_DTYPES[arr.dtype.name], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        arrays.append(arr)
        offset += arr.nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for arr in arrays:
            if arr.size:
                f.write(memoryview(arr).cast("B"))


class ExportedFile(type(Path())):  # type: ignore[misc]  # PosixPath/WindowsPath: subclassable on 3.10+
    """The path a write produced, with ``nbytes``: the size of what this write wrote, taken before the file
    was renamed into place (a concurrent write to the same path may have replaced it since, so ``stat()``
    can disagree). Paths derived from it (``.parent``, ...) have no ``nbytes``."""

    nbytes: int


#: what :func:`save_artifact` returns (the same type as an export's)
SavedFile = ExportedFile


def write_atomically(path: Path, write: Callable[[str], None]) -> ExportedFile:
    """Call ``write(tmp)`` on a temporary file next to ``path`` and rename it to ``path``: the target is never
    half-written and a failure leaves nothing behind. The result's ``nbytes`` is the size written. The one
    atomic writer of device files (exports, ONNX graphs, resized artifacts, deltas)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        nbytes = os.stat(tmp).st_size
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    written = ExportedFile(path)
    written.nbytes = nbytes
    return written


def save_artifact(path: str | Path, tensors: dict[str, np.ndarray], manifest: dict[str, str]) -> ExportedFile:
    """Write an artifact (or a delta) atomically (:func:`write_atomically`) with canonical bytes
    (:func:`write_safetensors`); returns the path with ``nbytes``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a directory; give the output file's name")
    return write_atomically(path, lambda tmp: write_safetensors(tmp, tensors, manifest))


def _table(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {name[len(TABLE):]: arr for name, arr in tensors.items() if name.startswith(TABLE)}


def _elastic(tensors: dict[str, np.ndarray], manifest: dict[str, str]) -> dict[str, Any]:
    """The table description of a resizable artifact; ``ValueError`` (one line) for any other."""
    try:
        description = json.loads(manifest["table"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("the artifact's manifest has no readable table description") from None
    kind = description.get("kind")
    if kind != "elastic":
        raise ValueError(f"only an elastic (RULE/PEEL) artifact can be resized; this one holds a {kind!r} table")
    if NORMS in tensors:
        raise ValueError("a cosine-scoring artifact cannot be resized: its stored item norms depend on the kept "
                         "blocks (build it for the budget instead)")
    return description


def finish_manifest(tensors: dict[str, np.ndarray], manifest: dict[str, str],
                    changes: dict[str, str] | None = None) -> dict[str, str]:
    """The manifest of resized ``tensors``: ``manifest`` with ``changes``, ``table_bytes`` recomputed, no
    signature, and the new checksum."""
    out = {k: v for k, v in manifest.items() if k not in ("checksum", "signature")}
    out.update(changes or {})
    out["table_bytes"] = str(sum(int(a.nbytes) for name, a in tensors.items() if name.startswith(TABLE)))
    out["checksum"] = artifact_checksum(tensors, out)
    return out


def _columns(kept: np.ndarray, wanted: np.ndarray, width: int) -> np.ndarray:
    """Column indices, in a group matrix whose blocks are ``kept``, of the blocks ``wanted`` (a subset)."""
    at = np.searchsorted(kept, wanted)
    return (at[:, None] * width + np.arange(width)[None, :]).reshape(-1)


# ------------------------------------------------------------------------------------------- shrink


def shrink_tensors(tensors: dict[str, np.ndarray], manifest: dict[str, str], budget_bytes: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and manifest of the artifact shrunk to an item-table budget (module docstring); the inputs
    are not modified (unchanged arrays are shared). ``ValueError`` for an artifact that is not elastic, is
    cosine-scoring or stores no priority, a budget below one block per group, or one whose architecture needs
    blocks the artifact does not hold."""
    description = _elastic(tensors, manifest)
    arrays = _table(tensors)
    _, mask, parts = elastic_groups(arrays, description)
    priority = elastic_priority(arrays, description)
    if priority is None:
        raise ValueError("this artifact stores no block priority, so it cannot be shrunk on the device (export it "
                         "with one: ElasticTable.set_priority, Customizer.write(..., priority=True))")
    if isinstance(budget_bytes, bool) or int(budget_bytes) != budget_bytes or budget_bytes < 1:
        raise ValueError(f"the budget must be a positive whole number of bytes, got {budget_bytes!r}")
    _, dim, num_blocks, _, dtype = elastic_layout(description)
    width = dim // num_blocks
    sizes = np.asarray([len(p.items) for p in parts], dtype=np.int64)
    target = select_by_priority(priority, sizes, width, dtype, int(budget_bytes), with_priority=True)
    missing = target & ~mask
    if missing.any():
        g, k = (int(v[0]) for v in np.nonzero(missing))
        raise ValueError(f"budget {int(budget_bytes):,} B keeps blocks this artifact does not hold (block {k} of "
                         f"group {g}; it has {int(manifest.get('table_bytes', 0)):,} B of table): grow it with a "
                         "delta instead (`pocketrec delta BIG SMALL`)")
    if np.array_equal(target, mask):  # nothing to drop: the artifact as it is, signature included
        return dict(tensors), dict(manifest)
    out = dict(tensors)
    for g, part in enumerate(parts):
        wanted = np.flatnonzero(target[g])
        if len(wanted) != len(part.kept):  # np.take copies: the old matrix goes when the old tensors do
            out[f"{TABLE}blocks/{g}"] = np.ascontiguousarray(
                np.take(part.values, _columns(part.kept, wanted, width), axis=1))
    out[f"{TABLE}mask"] = encode_mask(target)
    if dtype == "int8":
        full = np.zeros(mask.shape, dtype=np.float32)
        full[mask] = arrays["scales"]
        out[f"{TABLE}scales"] = np.ascontiguousarray(full[target])
    return out, finish_manifest(out, manifest)


# ------------------------------------------------------------------------------------------- deltas


@dataclass
class Delta:
    """A delta file's tensors and metadata (module docstring); :meth:`load` reads and verifies one."""

    tensors: dict[str, np.ndarray]
    manifest: dict[str, str]

    @property
    def base_checksum(self) -> str:
        return self.manifest["base_checksum"]

    @property
    def target_checksum(self) -> str:
        return self.manifest["target_checksum"]

    @property
    def target_table_bytes(self) -> int:
        return int(self.manifest["target_table_bytes"])

    @property
    def nbytes(self) -> int:
        """Bytes of the delta's tensors (the file adds its header)."""
        return int(sum(a.nbytes for a in self.tensors.values()))

    def verify(self, source: str = "delta") -> None:
        """``DeltaError`` unless this is a delta of this version whose own checksum matches."""
        required = ("format", "version", "base_checksum", "target_checksum", "target_table_bytes", "changes",
                    "checksum")
        if self.manifest.get("format") != DELTA_FORMAT:
            raise DeltaError(f"{source}: not a pocketrec delta (format {self.manifest.get('format')!r})")
        if self.manifest.get("version") != str(DELTA_VERSION):
            raise DeltaError(f"{source}: delta version {self.manifest.get('version')} is not supported (this "
                             f"runtime reads version {DELTA_VERSION})")
        missing = [k for k in required if k not in self.manifest]
        if missing:
            raise DeltaError(f"{source}: the delta's metadata is missing {missing}")
        if artifact_checksum(self.tensors, self.manifest) != self.manifest["checksum"]:
            raise DeltaError(f"{source}: delta checksum mismatch, the delta is damaged or was modified")

    def save(self, path: str | Path) -> Any:
        """Write the delta atomically (canonical bytes); returns the path with ``nbytes``."""
        return save_artifact(path, self.tensors, self.manifest)

    @classmethod
    def load(cls, path: str | Path) -> Delta:
        """Read and verify a delta file; ``DeltaError`` (one line) for a missing, truncated or damaged one."""
        path = Path(path)
        tensors, manifest = read_safetensors(path, DeltaError, "delta file")
        delta = cls(tensors, manifest)
        delta.verify(str(path))
        return delta


def _read(artifact: Any) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """``(tensors, manifest)`` of a path (read and verified) or of a loaded model that keeps its tensors."""
    if isinstance(artifact, (str, Path)):
        return read_artifact(artifact)
    if isinstance(artifact, tuple):
        return artifact
    tensors = getattr(artifact, "tensors", None)
    if tensors is None:
        raise ValueError("this model does not keep its tensors (only elastic artifacts do)")
    return tensors, artifact.manifest


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes (NaN-safe, -0.0 distinct: what the checksum sees)."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def make_delta(big: Any, small: Any) -> Delta:
    """The delta that grows ``small`` into ``big`` (paths, loaded :class:`DeviceModel` s or ``(tensors,
    manifest)`` pairs): the blocks ``big`` keeps and ``small`` does not, their int8 scales, ``big``'s mask and
    both checksums (module docstring). ``ValueError`` unless ``small`` is ``big`` with blocks dropped (same
    table, groups and priority, every other tensor and manifest entry equal). The delta is checked by applying
    it before it is returned."""
    big_tensors, big_manifest = _read(big)
    small_tensors, small_manifest = _read(small)
    description = _elastic(big_tensors, big_manifest)
    _elastic(small_tensors, small_manifest)
    for key in sorted((set(big_manifest) | set(small_manifest)) - set(_DERIVED)):
        if big_manifest.get(key) != small_manifest.get(key):
            raise ValueError(f"the artifacts differ in their manifest entry {key!r}: SMALL is not BIG with "
                             "blocks dropped")
    resized = {f"{TABLE}mask", f"{TABLE}scales"} | {n for n in big_tensors if n.startswith(f"{TABLE}blocks/")}
    for name in sorted((set(big_tensors) | set(small_tensors)) - resized):
        if name not in big_tensors or name not in small_tensors or not _same(big_tensors[name], small_tensors[name]):
            raise ValueError(f"the artifacts differ in {name}: SMALL is not BIG with blocks dropped")
    big_arrays, small_arrays = _table(big_tensors), _table(small_tensors)
    _, big_mask, big_parts = elastic_groups(big_arrays, description)
    _, small_mask, small_parts = elastic_groups(small_arrays, description)
    if (small_mask & ~big_mask).any():
        raise ValueError("SMALL keeps blocks BIG does not: give the larger artifact first (delta BIG SMALL)")
    width = int(description["dim"]) // int(description["num_blocks"])
    added = big_mask & ~small_mask
    tensors: dict[str, np.ndarray] = {"mask": encode_mask(big_mask)}
    for g, (bp, sp) in enumerate(zip(big_parts, small_parts, strict=True)):
        if not _same(np.take(bp.values, _columns(bp.kept, sp.kept, width), axis=1), sp.values):
            raise ValueError(f"the artifacts' blocks of group {g} differ: SMALL is not BIG with blocks dropped")
        if added[g].any():
            tensors[f"blocks/{g}"] = np.ascontiguousarray(
                np.take(bp.values, _columns(bp.kept, np.flatnonzero(added[g]), width), axis=1))
    if description.get("dtype") == "int8":
        big_full = np.zeros(big_mask.shape, dtype=np.float32)
        big_full[big_mask] = big_arrays["scales"]
        if not _same(big_full[small_mask], small_arrays["scales"]):
            raise ValueError("the artifacts' int8 scales differ: SMALL is not BIG with blocks dropped")
        if added.any():
            tensors["scales"] = np.ascontiguousarray(big_full[added])
    changes = {k: v for k, v in big_manifest.items() if k not in ("checksum", "signature")
               and small_manifest.get(k) != v}
    manifest = {"format": DELTA_FORMAT, "version": str(DELTA_VERSION), "base_checksum": small_manifest["checksum"],
                "target_checksum": big_manifest["checksum"], "target_table_bytes": big_manifest["table_bytes"],
                "changes": json.dumps(changes, sort_keys=True)}
    if "signature" in big_manifest:
        manifest["target_signature"] = big_manifest["signature"]
    manifest["checksum"] = artifact_checksum(tensors, manifest)
    delta = Delta(tensors, manifest)
    apply_delta(small_tensors, small_manifest, delta)  # raises if the result is not BIG
    return delta


def apply_delta(tensors: dict[str, np.ndarray], manifest: dict[str, str], delta: Delta | str | Path,
                key: bytes | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The tensors and manifest of the artifact grown by ``delta`` (a :class:`Delta` or a path); the inputs are
    not modified. ``DeltaError`` (one line) for a damaged delta, one made for another artifact, or a result
    whose checksum is not the delta's target; with ``key`` also unless the delta carries a target signature
    made with it."""
    delta = Delta.load(delta) if isinstance(delta, (str, Path)) else delta
    delta.verify()
    if delta.base_checksum != manifest.get("checksum"):
        raise DeltaError(f"this delta was made for another artifact (its base is {delta.base_checksum[:12]}..., "
                         f"this artifact is {str(manifest.get('checksum'))[:12]}...)")
    description = _elastic(tensors, manifest)
    arrays = _table(tensors)
    _, mask, parts = elastic_groups(arrays, description)
    _, dim, num_blocks, num_groups, dtype = elastic_layout(description)
    width = dim // num_blocks
    try:
        target = decode_mask(delta.tensors["mask"], num_groups, num_blocks)
    except (KeyError, ValueError) as err:
        raise DeltaError(f"damaged delta: its target mask is unreadable ({err})") from None
    if (mask & ~target).any():
        raise DeltaError("damaged delta: its target drops blocks this artifact keeps")
    added = target & ~mask
    expected = {"mask"} | {f"blocks/{g}" for g in range(num_groups) if added[g].any()}
    expected |= {"scales"} if dtype == "int8" and added.any() else set()
    if set(delta.tensors) != expected:
        raise DeltaError(f"damaged delta: it holds {sorted(delta.tensors)[:6]}, expected {sorted(expected)[:6]}")
    out = dict(tensors)
    for g, part in enumerate(parts):
        if not added[g].any():
            continue
        extra = delta.tensors[f"blocks/{g}"]
        rows, kept, new = len(part.items), np.flatnonzero(target[g]), np.flatnonzero(added[g])
        if extra.shape != (rows, len(new) * width) or extra.dtype != np.dtype(dtype):
            raise DeltaError(f"damaged delta: blocks/{g} is {extra.shape} {extra.dtype}, expected "
                             f"{(rows, len(new) * width)} {dtype}")
        grown = np.empty((rows, len(kept), width), dtype=extra.dtype)
        grown[:, np.searchsorted(kept, part.kept)] = part.values.reshape(rows, len(part.kept), width)
        grown[:, np.searchsorted(kept, new)] = extra.reshape(rows, len(new), width)
        out[f"{TABLE}blocks/{g}"] = grown.reshape(rows, len(kept) * width)
    out[f"{TABLE}mask"] = encode_mask(target)
    if dtype == "int8" and added.any():
        extra = delta.tensors["scales"]
        if extra.shape != (int(added.sum()),) or extra.dtype != np.float32:
            raise DeltaError(f"damaged delta: scales is {extra.shape} {extra.dtype}, expected "
                             f"({int(added.sum())},) float32")
        full = np.zeros(mask.shape, dtype=np.float32)
        full[mask] = arrays["scales"]
        full[added] = extra
        out[f"{TABLE}scales"] = np.ascontiguousarray(full[target])
    bad = non_finite({k: v for k, v in delta.tensors.items() if k != "mask"})
    if bad:
        raise DeltaError(f"damaged delta: {non_finite_message(bad, 'refused')}")
    try:
        changes = json.loads(delta.manifest["changes"])
        if not isinstance(changes, dict):
            raise TypeError("not an object")
    except (TypeError, ValueError) as err:
        raise DeltaError(f"damaged delta: unreadable changes ({err})") from None
    grown_manifest = finish_manifest(out, manifest, {str(k): str(v) for k, v in changes.items()})
    if grown_manifest["checksum"] != delta.target_checksum:
        raise DeltaError("the grown artifact does not match the delta's target checksum (a damaged or forged "
                         "delta); nothing was changed")
    if "target_signature" in delta.manifest:
        grown_manifest["signature"] = delta.manifest["target_signature"]
    if key is not None and not ("signature" in grown_manifest
                                and signature_matches(grown_manifest["checksum"], grown_manifest["signature"], key)):
        raise DeltaError("the delta carries no target signature made with this key; nothing was changed")
    return out, grown_manifest


def signed(manifest: dict[str, str], key: bytes | None) -> dict[str, str]:
    """``manifest`` with the signature of its checksum under ``key`` (unchanged when ``key`` is ``None``)."""
    if key is None:
        return manifest
    if not key:
        raise ValueError("the signing key is empty")
    return {**manifest, "signature": sign(manifest["checksum"], key)}


__all__ = ["DELTA_FORMAT", "DELTA_VERSION", "Delta", "DeltaError", "apply_delta",
           "finish_manifest", "make_delta", "save_artifact", "shrink_tensors", "signed", "write_safetensors"]
