"""The server's disk cache of device files (least recently used out past a size cap) and its record of the files
it made.

* Files: ``FOLDER/files/<sha256 of the request key>.bin`` with a ``.json`` beside it (the key and the response
  headers). A hit touches the entry; :meth:`ArtifactCache.put` evicts the least recently used entries until
  the cache fits ``max_bytes`` (a file larger than the cap is served but not kept). The cache survives a
  restart: the entries on disk are indexed again, oldest access first.
* Records: ``FOLDER/made.jsonl``, one line per safetensors file made (its checksum and its
  :class:`~pocketrec.fleet.models.Plan`), kept when the file itself is evicted: a device's later delta request
  names its file by checksum, and the server rebuilds the file from the plan if it is no longer cached. A
  checksum the records lack is a file this server did not make.

Thread-safe: one lock around the index (the builds run in worker threads).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MADE = "made.jsonl"


@dataclass
class Entry:
    key: str
    path: Path
    nbytes: int
    headers: dict[str, str]


class ArtifactCache:
    """Device files on disk, LRU under ``max_bytes`` (module docstring)."""

    def __init__(self, folder: str | Path, max_bytes: int = 1 << 30) -> None:
        if max_bytes < 0:
            raise ValueError(f"the cache size cap must be >= 0, got {max_bytes}")
        self.folder = Path(folder)
        self.files = self.folder / "files"
        self.files.mkdir(parents=True, exist_ok=True)
        self.scratch = self.folder / "scratch"  # builds write here, then the file moves into files/
        self.scratch.mkdir(exist_ok=True)
        for stale in self.scratch.iterdir():  # a build killed mid-way
            stale.unlink(missing_ok=True)
        self.max_bytes = int(max_bytes)
        self.evictions = 0
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._bytes = 0
        self._records: dict[str, dict[str, Any]] = {}
        self._index()

    # ------------------------------------------------------------------ files
    def _index(self) -> None:
        found = []
        for sidecar in self.files.glob("*.json"):
            data = sidecar.with_suffix(".bin")
            try:
                meta = json.loads(sidecar.read_text())
                found.append((data.stat().st_mtime, Entry(meta["key"], data, data.stat().st_size, meta["headers"])))
            except (OSError, ValueError, KeyError):
                sidecar.unlink(missing_ok=True)
                data.unlink(missing_ok=True)
        for _, entry in sorted(found, key=lambda f: f[0]):
            self._entries[entry.key] = entry
            self._bytes += entry.nbytes
        with self._lock:
            self._evict()
        made = self.folder / MADE
        if made.exists():
            for line in made.read_text().splitlines():
                try:
                    record = json.loads(line)
                    self._records[record["checksum"]] = record["plan"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash

    @staticmethod
    def _name(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()[:40]

    def get(self, key: str) -> tuple[bytes, dict[str, str]] | None:
        """The file's bytes and headers, or ``None``; a hit becomes the most recently used entry."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            try:
                content = entry.path.read_bytes()
            except OSError:  # removed behind the server's back
                self._drop(key)
                return None
            self._entries.move_to_end(key)
            os.utime(entry.path)
            return content, dict(entry.headers)

    def put(self, key: str, source: Path, headers: dict[str, str]) -> bool:
        """Move the built file ``source`` into the cache under ``key`` (``False``, and ``source`` removed, when it
        is larger than the whole cache)."""
        nbytes = source.stat().st_size
        with self._lock:
            if nbytes > self.max_bytes:
                source.unlink(missing_ok=True)
                return False
            if key in self._entries:
                self._drop(key)
            path = self.files / f"{self._name(key)}.bin"
            os.replace(source, path)
            path.with_suffix(".json").write_text(json.dumps({"key": key, "headers": headers}))
            self._entries[key] = Entry(key, path, nbytes, dict(headers))
            self._bytes += nbytes
            self._evict()
        return True

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        self._bytes -= entry.nbytes
        entry.path.unlink(missing_ok=True)
        entry.path.with_suffix(".json").unlink(missing_ok=True)

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._entries:
            self._drop(next(iter(self._entries)))
            self.evictions += 1

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    # ------------------------------------------------------------------ records
    def remember(self, checksum: str, plan: dict[str, Any]) -> None:
        """Record that this server made the safetensors file ``checksum`` from ``plan`` (appended to disk)."""
        with self._lock:
            if checksum in self._records:
                return
            self._records[checksum] = plan
            with open(self.folder / MADE, "a") as f:
                f.write(json.dumps({"checksum": checksum, "plan": plan}) + "\n")

    def recall(self, checksum: str) -> dict[str, Any] | None:
        """The plan of the file ``checksum`` this server made, ``None`` for one it did not."""
        with self._lock:
            return self._records.get(checksum)
