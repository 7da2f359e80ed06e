"""The models a fleet server serves: RULE and PEEL runs, each ready to plan and write a device file for any budget.

A :class:`ServedModel` wraps the run's customizer (:class:`~pocketrec.methods.customize.Customizer` for RULE,
:class:`~pocketrec.methods.peel_customize.PeelCustomizer` for PEEL) and turns a request (budget, user or user
group) into a :class:`Plan`: the architecture, precision and block priority of the file. Every file it writes
stores its block priority (resizable), so that a device can shrink it and the server can grow it with a delta.

Growing: a device's file of budget A grows to budget B along **its own** block priority
(:meth:`ServedModel.grow_plan`): the target keeps every block the file has plus the next ones in its priority
order, so the delta holds only the added blocks. For PEEL that is the file built directly for B (a group's
priority is the same at every budget); for RULE, whose search picks each budget's architecture anew, the grown
file is the device's architecture extended by popularity, which may differ from the one a fresh request for B
gets (RULE's search).

Builds touch the customizer's model (its table's architecture and precision are set for the export), so one
model builds one file at a time (:attr:`ServedModel.lock`); different models build in parallel.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.formats.elastic_arrays import decode_mask, encode_mask, select_by_priority
from pocketrec.methods.customize import AUTO_DTYPES, Choice, block_priority, run_folder_of
from pocketrec.search.budget import parse_budget
from pocketrec.tables.elastic import ElasticTable

#: the methods whose runs a server serves (one trained model, any budget)
SERVED_METHODS = ("rule", "peel")


class RequestError(ValueError):
    """A request the server refuses: ``status`` is the HTTP status (4xx), the message one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Target:
    """Whom a file is for: one user (its vector and items are in the file), one PEEL user group (the table
    alone), or nobody (a RULE table alone)."""

    user: str | None = None
    group: int | None = None

    def key(self) -> str:
        parts = ([f"user={self.user}"] if self.user is not None else []) + \
            ([f"group={self.group}"] if self.group is not None else [])
        return ",".join(parts) or "table"


@dataclass
class Plan:
    """What one file holds: ``mask (G, N)`` at ``dtype``. Its block priority is not stored here but derived
    (:meth:`ServedModel.priority`): a PEEL file's is its user group's; a RULE file's is
    :func:`~pocketrec.methods.customize.block_priority` of ``order``, the architecture RULE's search chose for
    the file (a grown file keeps the one of the file it grew from), so a plan's record stays a few bytes."""

    model: str
    target: Target
    budget_bytes: int
    dtype: str
    mask: np.ndarray
    order: np.ndarray | None
    table_bytes: int

    def record(self) -> dict[str, Any]:
        """JSON-able form (the server remembers the plan of every file it made, to grow it later)."""
        return {"model": self.model, "user": self.target.user, "group": self.target.group,
                "budget_bytes": self.budget_bytes, "dtype": self.dtype, "shape": list(self.mask.shape),
                "mask": _hex(self.mask), "order": None if self.order is None else _hex(self.order),
                "table_bytes": self.table_bytes}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Plan:
        shape = record["shape"]
        order = None if record.get("order") is None else _unhex(record["order"], shape)
        return cls(record["model"], Target(record.get("user"), record.get("group")), int(record["budget_bytes"]),
                   record["dtype"], _unhex(record["mask"], shape), order, int(record["table_bytes"]))


def _hex(mask: np.ndarray) -> str:
    return encode_mask(mask).tobytes().hex()


def _unhex(text: str, shape: list[int]) -> np.ndarray:
    return decode_mask(np.frombuffer(bytes.fromhex(text), dtype=np.uint8), *shape)


class ServedModel:
    """One RULE or PEEL run behind the server (module docstring). ``name``: how requests call it; ``dtype``:
    the stored precision of its files (``auto``: the best on validation per budget); ``verify_users``:
    validation users that check each candidate architecture (fewer: faster first builds)."""

    def __init__(self, name: str, checkpoint: str | Path, dataset: Any = None, dtype: str = "auto",
                 verify_users: int = 1000) -> None:
        from pocketrec.train.checkpoint import read_meta

        folder, _ = run_folder_of(checkpoint)
        method = read_meta(folder).get("method")
        if method not in SERVED_METHODS:
            raise ValueError(f"{checkpoint} is a {method or 'teacher'} run: the server serves runs of "
                             "`pocketrec compress --method rule` or `--method peel`")
        if dtype != "auto" and dtype not in AUTO_DTYPES:
            raise ValueError(f"dtype must be auto or one of {', '.join(AUTO_DTYPES)}, got {dtype!r}")
        self.name, self.method, self.dtype = name, method, dtype
        if method == "peel":
            from pocketrec.methods.peel_customize import PeelCustomizer

            self.customizer: Any = PeelCustomizer(checkpoint, dataset, verify_users, resizable=True)
        else:
            from pocketrec.methods.customize import Customizer

            self.customizer = Customizer(checkpoint, dataset, verify_users, resizable=True)
        self.lock = threading.Lock()
        self.meta = self.customizer.meta
        self.data = self.customizer.data
        table: ElasticTable = self.customizer.table
        self.group_sizes, self.block_width = table.group_sizes(), table.block_width
        self.shape = (table.num_groups, table.num_blocks)
        self.dense_bytes = int(self.customizer.dense_bytes)
        ones, first = np.ones(self.shape, dtype=bool), np.zeros(self.shape, dtype=bool)
        first[:, 0] = True
        #: every block at float32 (the largest file there is; budgets are capped by the dense table anyway)
        self.full_bytes = ElasticTable.bytes_for(self.group_sizes, ones, self.block_width, "float32", True)
        dtypes = AUTO_DTYPES if dtype == "auto" else (dtype,)
        #: one block per item group at the cheapest precision: the smallest budget served
        self.min_bytes = min(ElasticTable.bytes_for(self.group_sizes, first, self.block_width, d, True)
                             for d in dtypes)
        self.max_bytes = min(self.full_bytes, self.dense_bytes)

    # ------------------------------------------------------------------ requests
    def info(self) -> dict[str, Any]:
        """What ``GET /v1/models`` says about this model."""
        info = {"name": self.name, "dataset": str(self.meta.get("dataset", "")), "family": "cf",
                "method": self.method, "items": int(self.data.num_items), "users": int(self.data.num_users),
                "dense_table_bytes": self.dense_bytes, "full_table_bytes": int(self.full_bytes),
                "budgets": {"min_table_bytes": int(self.min_bytes), "max_table_bytes": int(self.max_bytes)},
                "dtype": self.dtype, "formats": ["safetensors", "onnx"]}
        if self.method == "peel":
            info["user_groups"] = int(self.customizer.num_groups)
        return info

    def budget_bytes(self, budget: str | int) -> int:
        """Item-table bytes of a requested budget (bytes, or the CLI's strings: '5%', '20x', '40KB');
        :class:`RequestError` (422) outside what this model serves."""
        try:
            value = parse_budget(budget, self.dense_bytes)
        except ValueError as err:
            raise RequestError(422, str(err)) from None
        if value < self.min_bytes:
            raise RequestError(422, f"budget {budget!r} ({value:,} B) is below the smallest {self.name} file "
                                    f"({self.min_bytes:,} B of table: one block per item group)")
        if value > self.max_bytes:
            raise RequestError(422, f"budget {budget!r} ({value:,} B) is above the full {self.name} model "
                                    f"({self.max_bytes:,} B of table)")
        return value

    def target(self, user: str | None, group: int | None) -> Target:
        """The checked target of a request: :class:`RequestError` for an unknown user or group (404) or a
        combination this method does not serve (422)."""
        if user is not None and self.data.users.get(str(user)) is None:
            raise RequestError(404, f"unknown user {user!r}: not among the {self.data.num_users:,} users of "
                                    f"{self.name}")
        if self.method == "rule":
            if group is not None:
                raise RequestError(422, f"{self.name} is a RULE model: it has no user groups (give a user or none)")
            return Target(None if user is None else str(user))
        if user is not None and group is not None:
            raise RequestError(422, "give a user or a user group, not both")
        if user is None and group is None:
            raise RequestError(422, f"{self.name} is a PEEL model: give a user or a user group "
                                    f"(0..{self.customizer.num_groups - 1})")
        if user is not None:
            return Target(str(user), self.customizer.group_of(str(user)))
        if not 0 <= int(group) < self.customizer.num_groups:
            raise RequestError(404, f"unknown user group {group}: {self.name} has groups "
                                    f"0..{self.customizer.num_groups - 1}")
        return Target(None, int(group))

    # ------------------------------------------------------------------ builds
    def plan(self, budget_bytes: int, target: Target) -> Plan:
        """The file for ``budget_bytes`` and ``target``: RULE's search, or PEEL's blocks by alpha."""
        with self.lock:
            if self.method == "peel":
                choice = self.customizer.choose(budget_bytes, group=target.group, dtype=self.dtype)
            else:
                choice = self.customizer.choose(budget_bytes, dtype=self.dtype)
        order = None if self.method == "peel" else choice.mask
        return Plan(self.name, target, budget_bytes, choice.dtype, choice.mask, order, int(choice.table_bytes))

    def priority(self, plan: Plan) -> np.ndarray:
        """The block priority ``plan``'s file stores (:class:`Plan`)."""
        if self.method == "peel":
            with self.lock:
                return self.customizer.model(plan.target.group).table.priority
        return block_priority(plan.order, self.customizer.group_popularity)

    def grow_plan(self, base: Plan, budget_bytes: int) -> Plan:
        """``base``'s file grown to ``budget_bytes`` along its own priority (module docstring)."""
        if budget_bytes <= base.table_bytes:
            raise RequestError(422, f"a delta grows a file: the budget ({budget_bytes:,} B) must be above the "
                                    f"file's {base.table_bytes:,} B of table (shrink on the device: pocketrec resize)")
        try:
            mask = select_by_priority(self.priority(base), self.group_sizes, self.block_width, base.dtype,
                                      budget_bytes, with_priority=True)
        except ValueError as err:
            raise RequestError(422, str(err)) from None
        if (base.mask & ~mask).any():  # cannot happen for a file made along its priority; never send a bad delta
            raise RuntimeError("the grown architecture drops blocks of the base file")
        if np.array_equal(mask, base.mask):
            raise RequestError(422, f"nothing to add: the file already holds every block {budget_bytes:,} B allows "
                                    f"at its precision ({base.dtype}); fetch a new file for another precision")
        cost = ElasticTable.bytes_for(self.group_sizes, mask, self.block_width, base.dtype, True)
        return Plan(self.name, base.target, budget_bytes, base.dtype, mask, base.order, int(cost))

    def write(self, plan: Plan, path: str | Path, fmt: str = "safetensors", key: bytes | None = None) -> Any:
        """Write ``plan``'s device file at ``path`` (``fmt``: safetensors or onnx; signed with ``key``)."""
        choice = Choice(str(plan.budget_bytes), plan.budget_bytes, "served", plan.dtype, plan.mask,
                        plan.table_bytes, None, None, extra={"group": plan.target.group})
        users = [plan.target.user] if plan.target.user is not None else []
        with self.lock:
            if self.method == "peel":  # the group's model carries the group's priority
                return self.customizer.write(choice, path, users=users, key=key, fmt=fmt)
            return self.customizer.write(choice, path, users=users, key=key, priority=self.priority(plan), fmt=fmt)
