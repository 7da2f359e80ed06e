"""From one trained elastic checkpoint to a device artifact for any budget, without retraining (RULE).

:class:`Customizer` loads a ``rule`` checkpoint once (the model, its data's validation split, the fitted
estimator) and then, per budget: searches an architecture that fits (:data:`STRATEGIES`), picks the stored
precision (``dtype="auto"`` tries float32, float16 and int8: fewer blocks at full precision or more at
less), and writes the artifact of the chosen blocks. ``pocketrec customize`` is its command line.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pocketrec.methods.rule import ESTIMATOR_FILE, ArchitectureEvaluator, architecture_space, load_estimator
from pocketrec.search.budget import parse_budget
from pocketrec.search.evolution import aging_evolution, random_search
from pocketrec.tables.elastic import ElasticTable
from pocketrec.tables.elastic_core import check_architecture

#: how an architecture is chosen: RULE's search and the baselines it is measured against
STRATEGIES = ("evolution", "random", "uniform", "popularity")
#: the precisions ``dtype="auto"`` chooses between
AUTO_DTYPES = ("float32", "float16", "int8")
#: evolution cycles: the authors' config has 50; more cycles cost milliseconds (the estimator is cheap) and, on
#: ml-100k at 2% of the table, found an architecture above the popularity allocation where 50 did not
CYCLES = 300


@dataclass
class Choice:
    """An architecture for one budget, with what it cost to find."""

    budget: str
    budget_bytes: int
    strategy: str
    dtype: str
    mask: np.ndarray
    table_bytes: int
    verified: float | None
    estimated: float | None
    estimator_calls: int = 0
    verify_calls: int = 0
    seconds: float = 0.0
    artifact: str | None = None
    artifact_bytes: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"budget": self.budget, "budget_bytes": self.budget_bytes, "strategy": self.strategy,
                "dtype": self.dtype, "table_bytes": self.table_bytes, "blocks": int(self.mask.sum()),
                "mask": self.mask.astype(int).tolist(), "valid_recall@20": self.verified,
                "estimated": self.estimated, "estimator_calls": self.estimator_calls,
                "verify_calls": self.verify_calls, "seconds": round(self.seconds, 4),
                "artifact": self.artifact, "artifact_bytes": self.artifact_bytes, **self.extra}


def run_folder_of(checkpoint: str | Path) -> tuple[Path, Path]:
    """``(checkpoint folder, run folder)`` of a RULE run given as ``runs/rule`` or ``runs/rule/best``."""
    path = Path(checkpoint)
    if (path / "best" / "checkpoint.json").exists():
        return path / "best", path
    return path, path.parent


class Customizer:
    """A RULE checkpoint ready to customise (module docstring). ``verify_users``: validation users of the
    re-evaluation of the search's best candidates; ``verify_top``: how many candidates are re-evaluated;
    ``cycles``: the evolution's (:data:`CYCLES`); ``resizable``: files carry their block priority."""

    def __init__(self, checkpoint: str | Path, dataset: Any = None, verify_users: int = 1000, verify_top: int = 3,
                 seed: int = 0, resizable: bool = False, cycles: int = CYCLES) -> None:
        from pocketrec.train.checkpoint import load_checkpoint, read_meta
        from pocketrec.train.compat import load_dataset_of

        self.checkpoint, run = run_folder_of(checkpoint)
        meta = read_meta(self.checkpoint)
        if (meta.get("table") or {}).get("kind") != ElasticTable.kind:
            raise ValueError(f"{self.checkpoint} is not an elastic checkpoint (a {meta.get('method') or 'teacher'} "
                             "run): customize takes a run of `pocketrec compress --method rule`")
        estimator_path = run / ESTIMATOR_FILE
        if not estimator_path.exists():
            raise ValueError(f"{estimator_path} is missing: the estimator is fitted at the end of "
                             "`pocketrec compress --method rule`")
        self.model, self.meta = load_checkpoint(self.checkpoint)
        if not isinstance(self.model.table, ElasticTable):
            raise ValueError(f"{self.checkpoint} holds a {self.model.table.kind!r} table, not an elastic one")
        self.data = dataset if dataset is not None else load_dataset_of(self.meta, None, what="the checkpoint")
        self.table: ElasticTable = self.model.table
        self.evaluator = ArchitectureEvaluator(self.model, self.data, "valid", verify_users, seed)
        self.estimator, self.estimator_report = load_estimator(estimator_path)
        self.dense_bytes = int(self.meta["dense_table_bytes"])
        self.verify_top = verify_top
        self.cycles = cycles
        #: files carry their block priority (``2 * G * N`` bytes, counted in every budget): shrinkable on the device
        self.resizable = resizable
        self._verified: dict[tuple[str, bytes], float] = {}
        self.prefix = (self.meta.get("rule") or {}).get("space", "subset") == "prefix"
        self.seed = seed
        counts = np.asarray(self.data.train.sum(axis=0)).ravel()
        groups = self.table.groups.cpu().numpy()
        self.group_popularity = np.bincount(groups[1:], weights=counts[1:], minlength=self.table.num_groups)

    # ------------------------------------------------------------------ search
    def space(self, dtype: str) -> Any:
        return architecture_space(self.table, dtype, prefix=self.prefix, with_priority=self.resizable)

    def check_mask(self, mask: Any) -> np.ndarray:
        """``mask`` as this checkpoint's architecture (``ValueError`` for another shape or an empty group)."""
        return check_architecture(np.asarray(mask), self.table.num_groups, self.table.num_blocks)

    def choose(self, budget: str | int, strategy: str = "evolution", dtype: str = "auto",
               mask: Any = None) -> Choice:
        """The architecture for ``budget`` (bytes or ``"5%"``, ``"20x"``, ``"40KB"`` of the dense teacher
        table) by ``strategy``, at ``dtype`` (``"auto"``: the best verified of :data:`AUTO_DTYPES`); ``mask``
        uses a given architecture instead (checked against the checkpoint and the budget)."""
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
        start = time.perf_counter()
        budget_bytes = parse_budget(budget, self.dense_bytes)
        dtypes = AUTO_DTYPES if dtype == "auto" else (dtype,)
        choices, errors = [], []
        for each in dtypes:
            try:
                choices.append(self._choose_at(str(budget), budget_bytes, strategy, each, mask))
            except ValueError as err:
                errors.append(err)
        if not choices:
            raise errors[-1] if len(errors) == 1 or dtype != "auto" else _smallest_error(errors)
        best = max(choices, key=lambda c: c.verified if c.verified is not None else -1.0)
        best.seconds = time.perf_counter() - start
        best.estimator_calls = sum(c.estimator_calls for c in choices)
        best.verify_calls = sum(c.verify_calls for c in choices)
        return best

    def _choose_at(self, budget: str, budget_bytes: int, strategy: str, dtype: str, mask: Any) -> Choice:
        space = self.space(dtype)
        if budget_bytes < space.min_cost():
            raise ValueError(f"budget {budget_bytes:,} B is below one {dtype} block per item group "
                             f"({space.min_cost():,} B)")
        rng = np.random.default_rng(self.seed)
        calls_before = self.evaluator.calls
        estimated, estimator_calls = None, 0
        if mask is not None:
            chosen = self.check_mask(mask)
            if space.cost(chosen) > budget_bytes:
                raise ValueError(f"the architecture costs {space.cost(chosen):,} B at {dtype}, over the budget "
                                 f"{budget_bytes:,} B")
            verified = self._verify(chosen, dtype)
        elif strategy in ("uniform", "popularity"):
            chosen = space.uniform(budget_bytes) if strategy == "uniform" else \
                space.popularity(budget_bytes, self.group_popularity)
            verified = self._verify(chosen, dtype)
        else:
            # the hand-made allocations seed the evolution and are re-evaluated with the search's best candidates
            # (random search's too, so that the two searches differ only in how they explore)
            seeds = [space.uniform(budget_bytes), space.popularity(budget_bytes, self.group_popularity)]
            search = aging_evolution if strategy == "evolution" else random_search
            calls = 20 + self.cycles  # the evolution's: its initial population, then one child per cycle
            kwargs = {"calls": calls, "verify": None} if strategy == "random" else \
                {"init": seeds, "verify": None, "cycles": self.cycles}
            result = search(space, self.estimator.predict, budget_bytes, rng=rng, top=self.verify_top, **kwargs)
            estimator_calls = result.estimator_calls
            pool = [(c.mask, c.estimated) for c in result.candidates] + [(seed, None) for seed in seeds]
            verified_pool = [(self._verify(m, dtype), i, m, e) for i, (m, e) in enumerate(pool)]
            verified, _, chosen, estimated = max(verified_pool, key=lambda v: (v[0], -v[1]))
        return Choice(budget, budget_bytes, strategy, dtype, chosen, int(space.cost(chosen)), verified,
                      None if estimated is None else float(estimated), estimator_calls,
                      self.evaluator.calls - calls_before)

    def _verify(self, mask: np.ndarray, dtype: str) -> float:
        """Validation Recall@20 of ``mask`` at ``dtype``, each (architecture, precision) evaluated once."""
        key = (dtype, np.packbits(mask).tobytes())
        if key not in self._verified:
            with self.stored_as(dtype):
                self._verified[key] = self.evaluator(mask)
        return self._verified[key]

    @contextmanager
    def stored_as(self, dtype: str):
        """The table stored (scored and exported) at ``dtype`` for the duration."""
        before = self.table.stored_dtype
        self.table.stored_dtype = dtype
        try:
            yield self.table
        finally:
            self.table.stored_dtype = before

    # ------------------------------------------------------------------ output
    def evaluate(self, choice: Choice, split: str = "test") -> dict[str, float]:
        """Every CF metric of ``choice`` on ``split`` (all its users): for reports, never for choosing."""
        from pocketrec.eval.cf_metrics import evaluate_cf

        with self.stored_as(choice.dtype), self.table.using(choice.mask):
            return evaluate_cf(self.model.score_users, self.data.matrix(split), self.data.seen(split))

    def write(self, choice: Choice, path: str | Path, users: list[str] | None = None,
              key: bytes | None = None, priority: bool | np.ndarray | None = None, fmt: str = "safetensors") -> Any:
        """The device artifact of ``choice`` at ``path`` (the table alone, or with ``users``' vectors and items);
        ``choice`` records the path and the bytes written. ``priority`` (default: ``resizable``): also store
        the block priority of :func:`block_priority` (``2 * G * N`` bytes of table, counted in the budget
        when the customizer is ``resizable``), so that the device can shrink the file to smaller budgets by
        itself (:mod:`pocketrec.device.np_resize`); an array stores that priority instead (a grown file keeps
        the priority of the file it grew from). ``fmt``: ``safetensors`` or ``onnx`` (:func:`export_file`)."""
        priority = self.resizable if priority is None else priority
        if isinstance(priority, bool):
            priority = block_priority(choice.mask, self.group_popularity) if priority else None
        with self.stored_as(choice.dtype), self.table.using(choice.mask), _priority_set(self.table, priority):
            written = export_file(self.model, path, self.meta, self.data, users, key, fmt)
        choice.artifact, choice.artifact_bytes = str(written), int(written.nbytes)
        return written


#: the formats a customized device file is written in
FORMATS = ("safetensors", "onnx")


def export_file(model: Any, path: str | Path, meta: dict[str, Any], data: Any, users: list[str] | None,
                key: bytes | None = None, fmt: str = "safetensors", k: int = 100) -> Any:
    """``model`` (its table set to the architecture to ship) as a device file at ``path``: a safetensors artifact
    (signed with ``key`` when given) or an ONNX graph returning the top ``k`` (ONNX files are not signed);
    ``users``: the users whose vectors and items the file holds (default: none, the item table alone)."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    common = {"vocab": meta.get("vocab"), "dataset": str(meta.get("dataset", "")),
              "users": users if users is not None else [], "data": data}
    if fmt == "onnx":
        from pocketrec.device.onnx_export import export_onnx

        return export_onnx(model, path, k=k, **common)
    from pocketrec.device.artifact import export_artifact

    return export_artifact(model, path, key=key, **common)


# ------------------------------------------------------------------ block priority (dynamic budgets on the device)


def block_priority(mask: np.ndarray, group_popularity: np.ndarray) -> np.ndarray:
    """The block priority of a RULE artifact of architecture ``mask (G, N)``: flat indices ``g * N + k``,
    highest first. The blocks ``mask`` keeps come first, then the others; each part in the prefix order, block
    index first, then the groups by popularity (``group_popularity (G,)``, most popular first, ties by group):
    every group's block 0, then block 1 of the groups by popularity, ... So the device's shrink
    (:func:`~pocketrec.formats.elastic_arrays.select_by_priority`) drops the highest blocks of the least popular
    groups first, and the chosen architecture is exactly what the priority gives its own bytes."""
    mask = np.asarray(mask, dtype=bool)
    num_groups, num_blocks = mask.shape
    group_rank = np.argsort(np.argsort(-np.asarray(group_popularity, dtype=np.float64), kind="stable"), kind="stable")
    g, k = np.meshgrid(np.arange(num_groups), np.arange(num_blocks), indexing="ij")
    order = np.lexsort((group_rank.ravel()[g.ravel()], k.ravel(), ~mask.ravel()))  # last key sorts first
    return (g.ravel() * num_blocks + k.ravel())[order]


@contextmanager
def _priority_set(table: ElasticTable, priority: np.ndarray | None):
    """``table`` with ``priority`` set for the duration (nothing when ``None``)."""
    if priority is None:
        yield table
        return
    before = table.priority
    table.set_priority(priority)
    try:
        yield table
    finally:
        table.priority = before


def _smallest_error(errors: list[ValueError]) -> ValueError:
    return ValueError("; ".join(dict.fromkeys(str(e) for e in errors)))


def read_architecture(path: str | Path) -> np.ndarray:
    """An architecture file: JSON, either a list of rows of 0/1 (groups x blocks) or ``{"mask": ...}`` (what
    ``pocketrec customize --report`` writes per budget)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read the architecture file {path}: {err}") from None
    if isinstance(data, dict):
        data = data.get("mask")
    try:
        return np.asarray(data, dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"{path} does not hold a groups x blocks list of 0/1") from None


def write_report(path: str | Path, customizer: Any, choices: list[Choice]) -> None:
    """``path`` (JSON): the checkpoint, the dense table's bytes, the estimator's report (RULE) and every
    choice; with several choices also a ``curve.png`` next to it (validation Recall@20 against table bytes),
    when matplotlib is installed. ``customizer``: a RULE :class:`Customizer` or a PEEL ``PeelCustomizer``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"checkpoint": str(customizer.checkpoint), "dense_table_bytes": customizer.dense_bytes,
            "estimator": getattr(customizer, "estimator_report", None), "choices": [c.summary() for c in choices]}
    path.write_text(json.dumps(data, indent=1))
    if len(choices) < 2:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    points = sorted((c.table_bytes, c.verified) for c in choices if c.verified is not None)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([p[0] / customizer.dense_bytes * 100 for p in points], [p[1] for p in points], marker="o")
    ax.set_xlabel("item table, % of the dense table")
    ax.set_ylabel("validation Recall@20")
    ax.set_title(f"one {'PEEL' if hasattr(customizer, 'state') else 'RULE'} model, every budget")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path.with_name("curve.png"), dpi=120)
    plt.close(fig)
