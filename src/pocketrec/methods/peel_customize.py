"""From one PEEL run to the device file of a user group (or a user) at any budget, without retraining.

:class:`PeelCustomizer` loads a ``peel`` run once (the RULE model it refined, ``peel.safetensors``: the user
groups and each group's blocks and alpha) and then, per budget and group: takes the (item group, block) pairs
of largest alpha that fit (each item group keeps at least one: :func:`~pocketrec.formats.elastic_arrays.\
select_by_priority`), at the stored precision that validates best on the group's validation users
(``dtype="auto"``: float32, float16 or int8), and writes the artifact with the blocks in alpha order (its block
priority), so that the device can shrink it and grow it back by itself (``pocketrec resize``).
``pocketrec customize RUN --group g`` / ``--user U`` is its command line.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.formats.elastic_arrays import select_by_priority
from pocketrec.methods.customize import AUTO_DTYPES, Choice, export_file, run_folder_of
from pocketrec.methods.peel import (
    PEEL_FILE,
    PeelState,
    alpha_priority,
    group_popularity,
    nearest_group,
    rule_order,
)
from pocketrec.methods.rule import ArchitectureEvaluator
from pocketrec.search.budget import parse_budget
from pocketrec.tables.elastic import ElasticTable


class PeelCustomizer:
    """A PEEL run ready to customise (module docstring). ``verify_users``: validation users of a group that
    decide its precision; ``resizable`` (default): files carry their block priority (``2 G N`` bytes, counted
    in the budget), so a device shrinks and grows them."""

    def __init__(self, checkpoint: str | Path, dataset: Any = None, verify_users: int = 1000, seed: int = 0,
                 resizable: bool = True) -> None:
        from pocketrec.train.checkpoint import load_checkpoint, read_meta
        from pocketrec.train.compat import load_dataset_of

        self.checkpoint, run = run_folder_of(checkpoint)
        meta = read_meta(self.checkpoint)
        if meta.get("method") != "peel":
            raise ValueError(f"{self.checkpoint} is not a PEEL run (a {meta.get('method') or 'teacher'} "
                             "checkpoint): --group and --user take a run of `pocketrec compress --method peel`")
        if not (run / PEEL_FILE).exists():
            raise ValueError(f"{run / PEEL_FILE} is missing: it is written at the end of `pocketrec compress "
                             "--method peel`")
        self.base, self.meta = load_checkpoint(self.checkpoint)
        self.data = dataset if dataset is not None else load_dataset_of(self.meta, None, what="the checkpoint")
        self.base.attach(self.data)
        self.state, self.report = PeelState.load(run / PEEL_FILE)
        self.table: ElasticTable = self.base.table
        self.dense_bytes = int(self.meta["dense_table_bytes"])
        self.resizable = resizable
        self.verify_users, self.seed = verify_users, seed
        self._models: dict[int, Any] = {}
        self._evaluators: dict[int, ArchitectureEvaluator] = {}
        self._verified: dict[tuple[int, str, bytes], float] = {}

    # ------------------------------------------------------------------ users and groups
    @property
    def num_groups(self) -> int:
        return self.state.num_user_groups

    def group_of(self, user: str) -> int:
        """The group of the user with raw id ``user`` (``ValueError`` for a user the training data does not have)."""
        internal = self.data.users.get(user)
        if internal is None:
            raise ValueError(f"unknown user {user!r}: not among the {len(self.data.users):,} users of "
                             f"{self.data.name} (a new user's group comes from its vector: group_of_vector)")
        return int(self.state.labels[internal])

    def group_of_vector(self, vector: np.ndarray) -> int:
        """The group of a user the clustering never saw, from its vector (in the RULE model's user space: the
        LightGCN teacher's propagated vector, rotated by RULE's rotation): the nearest centroid."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.state.centroids.shape[1]:
            raise ValueError(f"a user vector has {self.state.centroids.shape[1]} values, got {vector.shape[0]}")
        return int(nearest_group(vector, self.state.centroids)[0])

    def check_group(self, group: int) -> int:
        if not 0 <= int(group) < self.num_groups:
            raise ValueError(f"unknown user group {group}: this run has groups 0..{self.num_groups - 1}")
        return int(group)

    def members(self, group: int) -> np.ndarray:
        """The internal ids of the users of ``group``."""
        return np.flatnonzero(self.state.labels == self.check_group(group))

    def priority(self, group: int) -> np.ndarray:
        """Group ``group``'s block priority: alpha, largest first, ties in RULE's order for the group."""
        group = self.check_group(group)
        popularity = group_popularity(self.data.train, self.members(group), self.table.groups.cpu().numpy(),
                                      self.table.num_groups)
        return alpha_priority(self.state.alpha[group].numpy(), rule_order(popularity, self.table.num_blocks))

    def model(self, group: int) -> Any:
        """Group ``group``'s device model (its refined blocks, every user's vector), with its priority set."""
        group = self.check_group(group)
        if group not in self._models:
            model = self.state.model(self.base, group)
            model.table.set_priority(self.priority(group))
            self._models[group] = model
        return self._models[group]

    # ------------------------------------------------------------------ selection
    def architecture(self, budget_bytes: int, group: int, dtype: str) -> np.ndarray:
        """The architecture of ``budget_bytes`` for ``group`` at ``dtype``: the pairs of largest alpha that fit."""
        table = self.model(group).table
        return select_by_priority(table.priority, table.group_sizes(), table.block_width, dtype, int(budget_bytes),
                                  with_priority=self.resizable)

    def choose(self, budget: str | int, group: int, dtype: str = "auto") -> Choice:
        """The architecture and precision for ``budget`` (bytes or ``"5%"``, ``"20x"``, ``"40KB"`` of the dense
        teacher table) and ``group``; ``ValueError`` when one block per item group does not fit."""
        start = time.perf_counter()
        group = self.check_group(group)
        budget_bytes = parse_budget(budget, self.dense_bytes)
        choices, errors = [], []
        for each in AUTO_DTYPES if dtype == "auto" else (dtype,):
            try:
                mask = self.architecture(budget_bytes, group, each)
            except ValueError as err:
                errors.append(str(err))
                continue
            table = self.model(group).table
            cost = ElasticTable.bytes_for(table.group_sizes(), mask, table.block_width, each, self.resizable)
            choices.append(Choice(str(budget), budget_bytes, "alpha", each, mask, int(cost),
                                  self.verify(group, mask, each), None, extra={"group": group}))
        if not choices:
            raise ValueError("; ".join(dict.fromkeys(errors)))
        best = max(choices, key=lambda c: c.verified)
        best.verify_calls = len(choices)
        best.seconds = time.perf_counter() - start
        return best

    def verify(self, group: int, mask: np.ndarray, dtype: str) -> float:
        """Validation Recall@20 of ``group``'s users under ``mask`` at ``dtype`` (each evaluated once)."""
        key = (group, dtype, np.packbits(mask).tobytes())
        if key not in self._verified:
            if group not in self._evaluators:
                self._evaluators[group] = ArchitectureEvaluator(self.model(group), self.data, "valid",
                                                                self.verify_users, self.seed,
                                                                users=self.members(group))
            table = self.model(group).table
            before, table.stored_dtype = table.stored_dtype, dtype
            try:
                self._verified[key] = self._evaluators[group](mask)
            finally:
                table.stored_dtype = before
        return self._verified[key]

    # ------------------------------------------------------------------ output
    def write(self, choice: Choice, path: str | Path, users: list[str] | None = None, key: bytes | None = None,
              fmt: str = "safetensors") -> Any:
        """The device artifact of ``choice`` at ``path``: its group's table (with its block priority when
        ``resizable``), alone or with ``users``' vectors and items (users of that group); ``fmt``:
        ``safetensors`` or ``onnx`` (:func:`~pocketrec.methods.customize.export_file`)."""
        group = int(choice.extra["group"])
        for user in users or []:
            if user != "all" and self.group_of(user) != group:
                raise ValueError(f"user {user!r} is in group {self.group_of(user)}, not {group}")
        model = self.model(group)
        table = model.table
        before, priority = table.stored_dtype, table.priority
        table.stored_dtype = choice.dtype
        table.priority = priority if self.resizable else None
        try:
            with table.using(choice.mask):
                written = export_file(model, path, self.meta, self.data, users, key, fmt)
        finally:
            table.stored_dtype, table.priority = before, priority
        choice.artifact, choice.artifact_bytes = str(written), int(written.nbytes)
        return written
