"""The query side of a collaborative-filtering artifact (numpy only): its users' vectors.

A LightGCN device never runs the graph. Its artifact holds, for each user it serves (one by default):

* ``users/vectors`` ``(U, D)``: the user's propagated vector, the query scored against the item table;
* ``users/seen_indptr`` ``(U + 1,)`` int64 and ``users/seen_items`` int32: CSR of the internal ids of the
  items each user already has (training and validation interactions), never recommended back;
* the manifest's ``users``: the users' raw ids, a JSON list in the order of the rows.
"""

from __future__ import annotations

import json

import numpy as np

VECTORS, SEEN_INDPTR, SEEN_ITEMS = "users/vectors", "users/seen_indptr", "users/seen_items"


class UserVectors:
    """Raw user ids, their query vectors and the items each has; ``ValueError`` for anything inconsistent."""

    def __init__(self, tensors: dict[str, np.ndarray], manifest: dict[str, str], num_items: int) -> None:
        missing = [name for name in (VECTORS, SEEN_INDPTR, SEEN_ITEMS) if name not in tensors]
        if missing or "users" not in manifest:
            raise ValueError(f"a user-vectors artifact needs {', '.join(missing) or 'the manifest key users'}")
        self.ids = [str(u) for u in json.loads(manifest["users"])]
        self.vectors = tensors[VECTORS]
        self.indptr = tensors[SEEN_INDPTR].astype(np.int64, copy=False)
        self.items = tensors[SEEN_ITEMS]
        count = len(self.ids)
        if self.vectors.ndim != 2 or len(self.vectors) != count:
            raise ValueError(f"{VECTORS} has shape {self.vectors.shape}, expected ({count}, dim)")
        if len(set(self.ids)) != count:
            raise ValueError("a user id appears more than once in the artifact")
        if (self.indptr.shape != (count + 1,) or self.indptr[0] != 0 or np.any(np.diff(self.indptr) < 0)
                or self.indptr[-1] != len(self.items)):
            raise ValueError(f"{SEEN_INDPTR} does not index {SEEN_ITEMS}")
        if len(self.items) and (self.items.min() < 1 or self.items.max() > num_items):
            raise ValueError(f"{SEEN_ITEMS} holds ids outside 1..{num_items}")
        self._row = {raw: row for row, raw in enumerate(self.ids)}

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def row(self, user: str | int | None) -> int:
        """The row of raw user id ``user``; ``None`` means the artifact's only user."""
        if user is None:
            if not self.ids:
                raise ValueError("this artifact holds the item table alone, no user: rank with your user's own "
                                 "vector (DeviceModel.query_top_k), or export / fetch a file with --user")
            if len(self.ids) != 1:
                raise ValueError(f"this artifact serves {len(self.ids)} users; name one ({self._shown()})")
            return 0
        if str(user) not in self._row:
            raise ValueError(f"user {str(user)!r} is not in this artifact (it serves {self._shown()})")
        return self._row[str(user)]

    def vector(self, row: int) -> np.ndarray:
        return self.vectors[row].astype(np.float32)

    def seen(self, row: int) -> np.ndarray:
        """Internal ids of the items user ``row`` already has."""
        return self.items[self.indptr[row]:self.indptr[row + 1]].astype(np.int64)

    def _shown(self) -> str:
        return ", ".join(self.ids[:5]) + (f" and {len(self.ids) - 5} more" if len(self.ids) > 5 else "")
