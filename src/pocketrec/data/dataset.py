"""In-memory datasets: remapped item ids, splits, and the vocabulary back to the user's own ids.

Every split is a :class:`SequenceSplit`: a list of item-id sequences plus, per sequence, the first
position that is a prediction target. Position ``t`` (``t >= first_target``) asks the model to predict
``seq[t]`` from the prefix ``seq[:t]``. This one shape covers both protocols of docs/data.md:

* session data (SR-GNN protocol): every prefix of a session is an example, so ``first_target = 1``;
* per-user leave-one-out: validation is ``seq[:-1]`` and test is ``seq`` with only the last
  position as a target (``first_target = len - 1``), training is ``seq[:-2]`` with every prefix.

Because the encoder is causal, all targets of one sequence are scored in one encoder pass; that is
what lets training and evaluation run once per session instead of once per prefix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Vocabulary:
    """Maps the user's raw item ids (strings) to 1..n and back. Id 0 is padding."""

    raw_ids: list[str]
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._index = {raw: i + 1 for i, raw in enumerate(self.raw_ids)}
        if len(self._index) != len(self.raw_ids):
            raise ValueError("vocabulary has duplicate raw ids")

    def __len__(self) -> int:
        return len(self.raw_ids)

    def encode(self, raw: str | int) -> int:
        """Internal id of a raw id; ``KeyError`` if unknown."""
        return self._index[str(raw)]

    def get(self, raw: str | int) -> int | None:
        return self._index.get(str(raw))

    def decode(self, ids: np.ndarray | list[int]) -> list[str]:
        """Raw ids of internal ids (1..n)."""
        return [self.raw_ids[int(i) - 1] for i in ids]

    def fingerprint(self) -> str:
        """Short hash identifying this exact mapping (used to refuse mismatched checkpoints)."""
        return hashlib.sha256("\n".join(self.raw_ids).encode()).hexdigest()[:16]

    def to_json(self) -> list[str]:
        return list(self.raw_ids)

    @classmethod
    def from_json(cls, data: list[str]) -> Vocabulary:
        return cls([str(x) for x in data])


@dataclass
class SequenceSplit:
    """Sequences of internal ids and, per sequence, the first target position (see module docstring)."""

    sequences: list[np.ndarray]
    first_target: np.ndarray

    def __post_init__(self) -> None:
        self.first_target = np.asarray(self.first_target, dtype=np.int64)
        if len(self.sequences) != len(self.first_target):
            raise ValueError("sequences and first_target differ in length")

    def __len__(self) -> int:
        return len(self.sequences)

    @classmethod
    def all_prefixes(cls, sequences: list[np.ndarray]) -> SequenceSplit:
        """Every prefix of every sequence is an example (SR-GNN expansion)."""
        return cls(sequences, np.ones(len(sequences), dtype=np.int64))

    @classmethod
    def last_only(cls, sequences: list[np.ndarray]) -> SequenceSplit:
        """Only the last item of each sequence is a target (leave-one-out)."""
        return cls(sequences, np.array([len(s) - 1 for s in sequences], dtype=np.int64))

    @property
    def num_examples(self) -> int:
        """Number of (prefix, target) pairs."""
        lengths = np.array([len(s) for s in self.sequences], dtype=np.int64)
        return int(np.clip(lengths - np.maximum(self.first_target, 1), 0, None).sum())

    def expand(self) -> tuple[list[np.ndarray], np.ndarray]:
        """The explicit (prefix, target) pairs, in SR-GNN order within a sequence; for tests and export."""
        prefixes, targets = [], []
        for seq, first in zip(self.sequences, self.first_target, strict=True):
            for t in range(max(int(first), 1), len(seq)):
                prefixes.append(seq[:t])
                targets.append(int(seq[t]))
        return prefixes, np.asarray(targets, dtype=np.int64)


@dataclass
class Dataset:
    """A named dataset ready for training: remapped ids, three splits, and provenance."""

    name: str
    protocol: str  # "session" or "leave-one-out"
    vocab: Vocabulary
    train: SequenceSplit
    valid: SequenceSplit
    test: SequenceSplit
    source: str = ""
    item_titles: dict[int, str] | None = None  # internal id -> human title, where the data has them
    #: what ``load_dataset`` was given (a registered name, or a file or folder's absolute path): recorded in
    #: checkpoints so that ``pocketrec evaluate`` can load the same data again without ``--dataset``
    origin: str = ""

    @property
    def num_items(self) -> int:
        return len(self.vocab)

    def item_counts(self) -> np.ndarray:
        """Occurrences of each item id (index = id) in the training inputs, i.e. the prefixes.

        Counted over the prefix-expanded samples as OD-Rec does: item at position ``i`` of a sequence
        of length ``L`` appears in ``L - 1 - i`` prefixes (see docs/methods/odrec.md).
        """
        counts = np.zeros(self.num_items + 1, dtype=np.int64)
        for seq, first in zip(self.train.sequences, self.train.first_target, strict=True):
            n_prefixes = len(seq) - max(int(first), 1)
            if n_prefixes <= 0:
                continue
            # item i is in every prefix seq[:t] with t > i and t >= first
            for i, item in enumerate(seq[:-1]):
                counts[item] += min(n_prefixes, len(seq) - 1 - i)
        return counts

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "protocol": self.protocol,
            "items": self.num_items,
            "train_sequences": len(self.train),
            "train_examples": self.train.num_examples,
            "valid_examples": self.valid.num_examples,
            "test_examples": self.test.num_examples,
            "source": self.source,
        }

    def __repr__(self) -> str:
        return f"Dataset({json.dumps(self.summary())})"
