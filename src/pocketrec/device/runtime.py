"""The on-device runtime: load a ``.safetensors`` artifact and recommend, with numpy only (no torch).

    from pocketrec.device.runtime import load
    model = load("model.safetensors")
    ids, scores = model.recommend(["12", "7", "99"], k=10)

This module imports only numpy, safetensors, json, hashlib and the standard library (a test checks that
importing it does not import torch). :func:`load` checks the manifest's format and version, the sha256
checksum (:func:`artifact_checksum`: every tensor and every manifest entry but ``checksum`` and
``signature``), that every float weight is finite and that the vocabulary has no duplicate id; it turns
anything it cannot trust (a missing, truncated or tampered file, an edited manifest, a different version, a
pickle renamed to ``.safetensors``; safetensors parsing never executes code) into an :class:`ArtifactError`
with a one-line message. Version-1 files (whose checksum covered the tensors only) are refused: re-export.

Signatures (optional, :mod:`pocketrec.device.signing`): an artifact exported with a key holds
``signature`` = HMAC-SHA256(key, checksum). ``load(path, key=KEY)`` refuses a file that is unsigned or
whose signature does not match ``KEY``; ``load(path)`` without a key checks integrity only (anyone can
recompute a checksum, so only a signature says who made the file).

Memory: the item table stays at its stored types (uint8 codes stay uint8, float16 rows stay float16 and
are upcast a chunk at a time); bit-packed codes are unpacked once at load (``n*M`` bytes for K <= 256);
encoder weights are cast to float32 (small); in cosine mode (``normalize``) the item norms are computed
once at load and kept, ``4 * (num_items + 1)`` bytes. Scoring allocates ``(num_items + 1)`` float32 scores
plus, for TT tables, one block of rebuilt rows (about 16k rows) at a time. An elastic artifact keeps every
tensor of its file (``DeviceModel.tensors``) so that it can change its budget in place (``shrink``, ``grow``,
``save``; :mod:`pocketrec.device.np_resize`): with the shared scoring that is its stored blocks on top of the
``b``-wide float32 rows the scorer precomputes.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.device.np_encoder import NumpyEncoder
from pocketrec.device.np_tables import NumpyTable, make_scorer, stream_top_k
from pocketrec.device.np_users import UserVectors
from pocketrec.device.signing import signature_matches
from pocketrec.extras import MissingExtraError

FORMAT = "pocketrec-device"
#: Tensor of the item-row norms in artifacts of cosine-scoring models.
NORMS = "scoring/norms"
#: The manifest's ``device_query``: what the device turns into a query vector.
SESSION_QUERY, USER_QUERY = "session-encoder", "user-vectors"
ONNX_FORMAT = "pocketrec-device-onnx"
VERSION = 2
_REQUIRED = ("format", "version", "table", "encoder", "num_items", "vocab", "checksum")
#: Manifest entries the checksum does not cover: the checksum itself and the signature of it.
_UNCHECKED = ("checksum", "signature")
_CHUNK = 1 << 20  # elements per step of the finiteness scan (bounds its transient memory)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class ArtifactError(ValueError):
    """A device artifact that is missing, damaged, of another version or not a pocketrec artifact."""


def artifact_checksum(tensors: dict[str, np.ndarray], manifest: dict[str, str]) -> str:
    """sha256 over the manifest, then ``name, dtype, shape, bytes`` of every tensor in sorted name order.

    The manifest counts as sorted-keys ASCII JSON of every entry but ``checksum`` and ``signature`` (so an
    edited encoder config, vocabulary or any other entry, even an added one, no longer matches); tensors
    count little-endian. Used by the writer and the reader alike.
    """
    digest = hashlib.sha256()
    covered = {key: value for key, value in manifest.items() if key not in _UNCHECKED}
    digest.update(json.dumps(covered, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode())
    digest.update(b"\0")  # the JSON holds no raw NUL: the manifest part ends unambiguously here
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        header = json.dumps([name, arr.dtype.name, list(arr.shape)])
        digest.update(header.encode())
        digest.update(b"\0")
        if arr.size:  # an empty array (a table-only file's users) has no bytes, and memoryview refuses it
            digest.update(memoryview(arr).cast("B"))
    return digest.hexdigest()


def non_finite(tensors: dict[str, np.ndarray]) -> list[tuple[str, int]]:
    """``(name, count)`` of each float tensor holding NaN or inf, in the dict's order (scanned in chunks)."""
    bad = []
    for name, arr in tensors.items():
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        flat = arr.reshape(-1)
        count = sum(int(np.count_nonzero(~np.isfinite(flat[i:i + _CHUNK]))) for i in range(0, flat.size, _CHUNK))
        if count:
            bad.append((name, count))
    return bad


def non_finite_message(bad: list[tuple[str, int]], cause: str = "the model diverged — retrain it") -> str:
    """One line naming the first non-finite tensor of :func:`non_finite` (and how many others there are)."""
    name, count = bad[0]
    more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
    return f"{name} holds {count} non-finite values (NaN/inf){more}; {cause}"


def read_safetensors(path: Path, error: type[Exception] = ValueError, what: str = "safetensors file"
                     ) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every tensor and the metadata of a ``.safetensors`` file; ``error`` (one line) for a missing, truncated or
    damaged one (an artifact, a delta)."""
    from safetensors import safe_open

    if not path.is_file():
        raise error(f"{path}: no such {what}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            manifest = dict(f.metadata() or {})
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as err:  # safetensors raises its own error types for damaged files
        reason = " ".join(str(err).split()) or type(err).__name__
        raise error(f"{path}: not a readable {what} ({reason[:200]})") from None
    return tensors, manifest


def read_artifact(path: str | Path, key: bytes | None = None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Tensors and manifest of an artifact, verified (signed with ``key`` when given); raises :class:`ArtifactError`."""
    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: no such artifact file")
    tensors, manifest = read_safetensors(path, ArtifactError, "safetensors file")
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not a pocketrec device artifact (format {manifest.get('format')!r})")
    if manifest.get("version") != str(VERSION):
        raise ArtifactError(f"{path}: artifact version {manifest.get('version')} is not supported "
                            f"(this runtime reads version {VERSION}); re-export it with `pocketrec export`")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise ArtifactError(f"{path}: manifest is missing {missing}")
    checksum = artifact_checksum(tensors, manifest)
    if checksum != manifest["checksum"]:
        raise ArtifactError(f"{path}: checksum mismatch, the tensors or the manifest were modified or damaged")
    if key is not None:
        if "signature" not in manifest:
            raise ArtifactError(f"{path}: the artifact is not signed, but a signing key was given to verify it")
        if not signature_matches(checksum, manifest["signature"], key):
            raise ArtifactError(f"{path}: signature mismatch, the artifact was not signed with this key")
    bad = non_finite(tensors)
    if bad:
        raise ArtifactError(f"{path}: {non_finite_message(bad)}")
    return tensors, manifest


class DeviceModel:
    """A loaded artifact: a numpy query side plus a numpy item-table scorer.

    The query side is the session encoder (``encoder``; :meth:`recommend` after a history) or, for a
    collaborative-filtering artifact, its users' vectors (``users``, :class:`~pocketrec.device.np_users.
    UserVectors`; :meth:`recommend_user`). Attributes: ``vocab`` (raw ids of internal ids ``1..n``),
    ``num_items``, ``max_len`` (0 without an encoder), ``manifest``, ``device_query``, ``table`` (the
    :class:`~pocketrec.device.np_tables.NumpyTable`), ``encoder``, ``users``.
    """

    def __init__(self, tensors: dict[str, np.ndarray], manifest: dict[str, str], source: str = "",
                 fast_scan: bool = False) -> None:
        try:
            self.manifest = manifest
            self.table_description: dict[str, Any] = json.loads(manifest["table"])
            self.encoder_config: dict[str, Any] = json.loads(manifest["encoder"])
            self.vocab = RawIds.from_artifact(manifest, tensors)
            self.num_items = int(manifest["num_items"])
        except (ValueError, TypeError, KeyError) as err:
            raise ArtifactError(f"{source}: damaged manifest ({err})") from None
        if len(self.vocab) != self.num_items:
            raise ArtifactError(f"{source}: vocabulary has {len(self.vocab)} ids, expected {self.num_items}")
        duplicate = self.vocab.duplicate()
        if duplicate is not None:
            raise ArtifactError(f"{source}: item id {duplicate!r} appears more than once in the vocabulary")
        table_arrays = {k[len("table/"):]: v for k, v in tensors.items() if k.startswith("table/")}
        enc_arrays = {k[len("encoder/"):]: v for k, v in tensors.items() if k.startswith("encoder/")}
        #: the query encoder the device runs: "session-encoder" (recent items) or "user-vectors" (CF)
        self.device_query = manifest.get("device_query", SESSION_QUERY)
        if self.device_query not in (SESSION_QUERY, USER_QUERY):
            raise ArtifactError(f"{source}: unknown device query {self.device_query!r} (a newer pocketrec?)")
        self.encoder: NumpyEncoder | None = None
        self.users: UserVectors | None = None
        try:
            self.table: NumpyTable = (fast_scan_scorer(table_arrays, self.table_description) if fast_scan
                                      else make_scorer(table_arrays, self.table_description))
            if self.device_query == USER_QUERY:
                self.users = UserVectors(tensors, manifest, self.num_items)
            else:
                self.encoder = NumpyEncoder({k: v for k, v in enc_arrays.items()}, self.encoder_config)
        except MissingExtraError:
            raise
        except (ValueError, KeyError, TypeError) as err:
            raise ArtifactError(f"{source}: {err}") from None
        query_dim = self.users.dim if self.users is not None else self.encoder.dim
        if self.table.num_items != self.num_items or self.table.dim != query_dim:
            raise ArtifactError(f"{source}: table ({self.table.num_items} items, dim {self.table.dim}) does not "
                                f"fit the manifest ({self.num_items} items, query dim {query_dim})")
        self.max_len = self.encoder.max_len if self.encoder is not None else 0
        self.table_bytes = int(sum(a.nbytes for a in table_arrays.values()))
        self.norms: np.ndarray | None = None
        if self.encoder is not None and self.encoder.normalize:  # older files without norms get them rebuilt
            self.norms = tensors[NORMS] if NORMS in tensors else self.table.row_norms()  # fp16 stays fp16
            if self.norms.shape != (self.num_rows,):
                raise ArtifactError(f"{source}: {NORMS} has shape {self.norms.shape}, expected ({self.num_rows},)")
        if fast_scan and self.norms is not None:
            raise ArtifactError(f"{source}: fast-scan ranks by inner product, and this model scores by cosine (a "
                                "session model with normalize=True, the default): load it without fast_scan, or "
                                "train its teacher with --encoder.normalize=false")
        self.source = source
        #: every tensor of the file, kept for an elastic artifact only (it can be resized and saved:
        #: :meth:`shrink`, :meth:`grow`, :meth:`save`); ``None`` for other kinds, whose scorers keep what they need
        self.tensors: dict[str, np.ndarray] | None = (
            tensors if self.table_description.get("kind") == "elastic" else None)

    # ------------------------------------------------------------------------------ dynamic budgets
    def shrink(self, budget_bytes: int) -> int:
        """Shrink an elastic artifact's item table in place to ``budget_bytes`` (item-table bytes, its priority
        array included) by dropping its lowest-priority blocks (:mod:`pocketrec.device.np_resize`); returns the new
        table bytes. The model then scores, and :meth:`save` writes, exactly the artifact built for that budget
        directly (same tensors, manifest and checksum); it is unsigned. ``ValueError`` (one line, nothing
        changed) for an artifact that is not elastic, is cosine-scoring or has no priority, a budget below one
        block per group, or one that needs blocks the artifact lacks."""
        from pocketrec.device.np_resize import shrink_tensors

        self._become(*shrink_tensors(self._resizable(), self.manifest, budget_bytes))
        return self.table_bytes

    def grow(self, delta: Any, key: bytes | None = None) -> int:
        """Add the blocks of ``delta`` (a :class:`~pocketrec.device.np_resize.Delta` or a delta file's path) in
        place; returns the new table bytes. Refused (``ValueError``, nothing changed) when the delta is damaged,
        was made for another artifact (its base checksum is not this artifact's), or does not give its target
        checksum; with ``key`` also unless it carries a target signature made with that key. The result is the
        larger artifact the delta was made from, signed when the delta carries its signature."""
        from pocketrec.device.np_resize import apply_delta

        self._become(*apply_delta(self._resizable(), self.manifest, delta, key))
        return self.table_bytes

    def save(self, path: str | Path, key: bytes | None = None) -> Any:
        """Write this (elastic) artifact atomically, with canonical bytes
        (:func:`~pocketrec.device.np_resize.write_safetensors`), signed with ``key`` when given; returns the path
        with ``nbytes``."""
        from pocketrec.device.np_resize import save_artifact, signed

        return save_artifact(path, self._resizable(), signed(self.manifest, key))

    def _resizable(self) -> dict[str, np.ndarray]:
        if self.tensors is None:
            raise ValueError(f"only an elastic (RULE/PEEL) artifact can be resized or saved; this one holds a "
                             f"{self.table_description.get('kind')!r} table")
        return self.tensors

    def _become(self, tensors: dict[str, np.ndarray], manifest: dict[str, str]) -> None:
        """Replace this model by the artifact ``(tensors, manifest)``: built aside first, so a failure changes
        nothing; the old arrays are released with the old state."""
        fresh = DeviceModel(tensors, manifest, source=self.source)
        self.__dict__.clear()
        self.__dict__.update(fresh.__dict__)

    # ------------------------------------------------------------------------------ internal ids
    def encode(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Query vector ``(dim,)`` of one session of internal ids (1..n, oldest first, <= max_len)."""
        if self.encoder is None:
            raise ValueError("this artifact ranks for its users (a collaborative-filtering model), not for a "
                             "history: recommend for a user instead")
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if ids.size == 0 or ids.min() < 1 or ids.max() > self.num_items:
            raise ValueError(f"a session needs 1..{self.max_len} internal ids in 1..{self.num_items}")
        return self.encoder.encode(self.table.rows(ids))

    def score_blocks(self, ids: Sequence[int] | np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """``(start, scores)`` over consecutive blocks of the catalogue for a session of internal ids.

        Cosine models' scores are divided by the stored norms. Entry 0 of the first block (padding) is
        meaningless; :meth:`scores` and :meth:`top_k` never rank it.
        """
        return self.query_score_blocks(self.encode(ids))

    def query_score_blocks(self, query: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """:meth:`score_blocks` of a query vector ``(dim,)`` (a session's encoding or a user's vector)."""
        for start, block in self.table.score_blocks(query):
            block = block.astype(np.float32, copy=False)
            if self.norms is not None:
                block = block / self.norms[start:start + len(block)]
            yield start, block

    def scores(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Scores ``(num_items + 1,)`` float32 of every item for a session of internal ids; entry 0 is -inf."""
        out = np.concatenate([block for _, block in self.score_blocks(ids)])
        out[0] = -np.inf
        return out

    def top_k(self, ids: Sequence[int] | np.ndarray, k: int = 10, exclude: Sequence[int] = ()
              ) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids and scores of the ``k`` best items (ties: smaller id first); never id 0 nor ``exclude``.

        Streams over the catalogue a block at a time, keeping only the best ``k`` so far: the working
        memory is one block of scores, not the whole catalogue's. ``k = 0`` gives nothing; a negative ``k``
        raises ``ValueError``.
        """
        return self.query_top_k(self.encode(ids), k, exclude)

    def query_top_k(self, query: np.ndarray, k: int = 10, exclude: Sequence[int] = ()
                    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`top_k` of a query vector ``(dim,)``."""
        if int(k) < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        k = min(int(k), self.num_items)
        best_ids, best_scores = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        if k == 0:
            return best_ids, best_scores
        if hasattr(self.table, "top_k"):  # fast-scan: its own exact top-k
            return self.table.top_k(query, k, exclude)
        return stream_top_k(self.query_score_blocks(query), k, exclude)

    @property
    def num_rows(self) -> int:
        return self.num_items + 1

    # ---------------------------------------------------------------------------------- raw ids
    def internal_ids(self, history: Sequence[str | int]) -> list[int]:
        """Internal ids of raw ids; unknown ids are skipped with a warning."""
        found = self.vocab.internal(history)
        known = [i for i in found if i is not None]
        unknown = [str(raw) for raw, i in zip(history, found, strict=True) if i is None]
        if unknown:
            shown = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
            warnings.warn(f"skipping {len(unknown)} item id(s) unknown to this model: {shown}", stacklevel=3)
        return known

    def recommend(self, history: Sequence[str | int], k: int = 10, exclude_history: bool = False
                  ) -> tuple[list[str], np.ndarray]:
        """The ``k`` best raw item ids after ``history`` (raw ids, oldest first) and their scores.

        Ids the model does not know are skipped with a ``UserWarning``; a history with no known id raises
        ``ValueError``. Only the last ``max_len`` known items are used. ``exclude_history`` drops the
        history's items from the ranking.
        """
        ids = self.internal_ids(history)
        if not ids:
            raise ValueError("history has no item known to this model; cannot recommend")
        ids = ids[-self.max_len:]
        best, scores = self.top_k(ids, k, exclude=ids if exclude_history else ())
        return [self.vocab.raw(i) for i in best], scores

    def recommend_user(self, user: str | int | None = None, k: int = 10, exclude_seen: bool = True
                       ) -> tuple[list[str], np.ndarray]:
        """The ``k`` best raw item ids for ``user`` (a raw id; ``None``: the artifact's only user) of a
        collaborative-filtering artifact, and their scores; the user's items are left out unless
        ``exclude_seen`` is off. ``ValueError`` for a user the artifact does not hold."""
        if self.users is None:
            raise ValueError("this artifact ranks after a history of items (a session model), not for a user")
        row = self.users.row(user)
        best, scores = self.query_top_k(self.users.vector(row), k,
                                        exclude=self.users.seen(row) if exclude_seen else ())
        return [self.vocab.raw(i) for i in best], scores


class RawIds:
    """The user's own item ids of internal ids ``1..n``.

    Integer ids (the usual case) are one int32/int64 tensor ``vocab/ids`` of the artifact, resident as is:
    ``4 n`` bytes, and a lookup scans it once per history (``O(n)``, cheap next to scoring ``n`` items).
    Other ids are a JSON list in the manifest, held as Python strings (tens of bytes per item).
    """

    TENSOR = "vocab/ids"

    def __init__(self, ids: np.ndarray | list[str]) -> None:
        self.ids = ids

    @classmethod
    def from_artifact(cls, manifest: dict[str, str], tensors: dict[str, np.ndarray]) -> RawIds:
        if manifest["vocab"] == cls.TENSOR:
            if cls.TENSOR not in tensors:
                raise ValueError(f"the manifest names a {cls.TENSOR} tensor the file does not hold")
            return cls(tensors[cls.TENSOR])
        return cls([str(v) for v in json.loads(manifest["vocab"])])

    @staticmethod
    def encode(vocab: list[str]) -> tuple[str, np.ndarray | None]:
        """``(manifest value, tensor or None)`` for a vocabulary: a tensor when every id is a plain integer
        that fits int64, else the JSON list of strings."""
        try:
            ints = [int(v) for v in vocab]
        except ValueError:
            ints = None
        if ints is not None and all(str(i) == str(v) and _INT64_MIN <= i <= _INT64_MAX
                                    for i, v in zip(ints, vocab, strict=True)):
            wide = bool(ints) and (min(ints) < -2**31 or max(ints) >= 2**31)
            return RawIds.TENSOR, np.asarray(ints, dtype=np.int64 if wide else np.int32)
        return json.dumps(vocab), None

    def __len__(self) -> int:
        return len(self.ids)

    def duplicate(self) -> str | None:
        """An id that appears more than once (the smallest, for integer ids), ``None`` when all are distinct."""
        if isinstance(self.ids, list):
            seen: set[str] = set()
            for raw in self.ids:
                if raw in seen:
                    return raw
                seen.add(raw)
            return None
        values, counts = np.unique(self.ids, return_counts=True)
        repeated = values[counts > 1]
        return str(repeated[0]) if len(repeated) else None

    def raw(self, internal: int) -> str:
        return str(self.ids[int(internal) - 1])

    def internal(self, raws: Sequence[str | int]) -> list[int | None]:
        """Internal id of each raw id, ``None`` where unknown."""
        if isinstance(self.ids, list):
            index = {raw: i + 1 for i, raw in enumerate(self.ids)}
            return [index.get(str(raw)) for raw in raws]
        wanted: dict[int, None] = {}
        for raw in raws:
            try:
                value = int(str(raw))
            except ValueError:
                continue
            if _INT64_MIN <= value <= _INT64_MAX:  # a larger integer is in no int64 vocabulary: unknown
                wanted[value] = None
        hits = np.flatnonzero(np.isin(self.ids, np.asarray(list(wanted), dtype=np.int64)))
        position = {int(self.ids[i]): int(i) + 1 for i in hits}
        out: list[int | None] = []
        for raw in raws:
            try:
                out.append(position.get(int(str(raw))) if str(int(str(raw))) == str(raw) else None)
            except ValueError:
                out.append(None)
        return out


def fast_scan_scorer(arrays: dict[str, np.ndarray], description: dict[str, Any]) -> NumpyTable:
    """The fast-scan scorer of a 4-bit codebook table (:mod:`pocketrec.device.np_fastscan`, imported only here: the
    runtime needs FAISS only when asked for fast-scan)."""
    from pocketrec.device.np_fastscan import FastScanScorer

    return FastScanScorer(arrays, description)  # checks the table (check_fast_scan) before building anything


def load(path: str | Path, key: bytes | None = None, fast_scan: bool = False) -> DeviceModel:
    """Load and verify a device artifact (see the module docstring); raises :class:`ArtifactError`.

    With ``key`` the artifact must also carry a signature made with that key. With ``fast_scan`` a 4-bit codebook
    table ranks on FAISS's fast-scan kernels (:mod:`pocketrec.device.np_fastscan`; the ``faiss`` extra), with the
    same ranks; other tables and cosine models are refused.
    """
    tensors, manifest = read_artifact(path, key)
    return DeviceModel(tensors, manifest, source=str(path), fast_scan=fast_scan)


class OnnxModel:
    """An exported ONNX model (:mod:`pocketrec.device.onnx_export`) in onnxruntime (imported lazily, torch-free).

    ``top_k(internal ids)`` returns the graph's ranked internal ids and scores; ``recommend`` maps raw ids;
    ``recommend_user`` ranks for a user of a collaborative-filtering graph.
    """

    def __init__(self, path: str | Path, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        if meta.get("format") != ONNX_FORMAT:
            raise ArtifactError(f"{path}: not a pocketrec ONNX model")
        self.vocab: list[str] = json.loads(meta["vocab"])
        self.device_query = meta.get("device_query", SESSION_QUERY)
        #: raw ids of the users a collaborative-filtering graph serves (row ``i`` is ``user_index = i``)
        self.users: list[str] = json.loads(meta["users"]) if "users" in meta else []
        self.max_len = int(json.loads(meta["encoder"]).get("max_len", 0))
        self._index = {raw: i + 1 for i, raw in enumerate(self.vocab)}

    def top_k(self, ids: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Internal ids and scores (best first) for one session of internal ids."""
        feed = np.asarray(ids, dtype=np.int64).reshape(1, -1)[:, -self.max_len:]
        scores, indices = self.session.run(None, {"item_ids": feed})
        return indices[0], scores[0]

    def recommend(self, history: list[str | int], k: int = 10) -> tuple[list[str], np.ndarray]:
        if int(k) < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        ids = [self._index[str(r)] for r in history if str(r) in self._index]
        if not ids:
            raise ValueError("history has no item known to this model; cannot recommend")
        best, scores = self.top_k(ids)
        return [self.vocab[int(i) - 1] for i in best[:k]], scores[:k]

    def recommend_user(self, user: str | int | None = None, k: int = 10) -> tuple[list[str], np.ndarray]:
        """The best raw item ids for ``user`` of a collaborative-filtering graph (``None``: its only user);
        the user's own items are never among them."""
        if self.device_query != USER_QUERY:
            raise ValueError("this graph ranks after a history of items (a session model), not for a user")
        if user is None and len(self.users) != 1:
            raise ValueError(f"this graph serves {len(self.users)} users; name one")
        row = 0 if user is None else (self.users.index(str(user)) if str(user) in self.users else -1)
        if row < 0:
            raise ValueError(f"user {str(user)!r} is not in this graph")
        scores, indices = self.session.run(None, {"user_index": np.asarray([row], dtype=np.int64)})
        finite = np.isfinite(scores[0])
        best, scores = indices[0][finite], scores[0][finite]
        return [self.vocab[int(i) - 1] for i in best[:k]], scores[:k]
