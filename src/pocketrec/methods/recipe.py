"""What every compression recipe shares: teacher in, budgeted student table, distillation, checkpoint out.

A method (OD-Rec, EODRec, ...) supplies only how to build its item table for a byte budget from the
teacher (:data:`TableBuilder`); :func:`distill_to_budget` does the rest in one order, so that every
check (dataset, budget, shapes) runs before anything is written:

1. load the teacher checkpoint and refuse it if it was trained on another dataset;
2. turn the budget (bytes, ``"3%"``, ``"30x"``, ``"200KB"``) into bytes of the teacher's dense fp32 table;
3. build the student's table with the method's builder (which may fit it to the teacher's rows);
4. the student = the teacher's encoder shape with that table, its encoder weights copied from the
   teacher (``DistillConfig.init_student_encoder_from_teacher``);
5. train with :mod:`pocketrec.train.distill`, selecting the epoch on validation; test at that epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pocketrec.config import to_dict
from pocketrec.data.dataset import Dataset
from pocketrec.models.session_encoder import SessionRecommender
from pocketrec.search.budget import parse_budget
from pocketrec.tables.base import STORED_FLOAT_DTYPES, ItemTable, check_stored_dtype
from pocketrec.tables.dense import DenseTable
from pocketrec.train.checkpoint import load_checkpoint
from pocketrec.train.compat import check_compatible
from pocketrec.train.distill import DistillConfig, distillation_loss, prepare_student
from pocketrec.train.recombination import hot_item_mask
from pocketrec.train.run import dataset_meta, run_training
from pocketrec.train.trainer import FitResult, TrainConfig, seed_everything

#: ``builder(teacher, budget_bytes) -> (table, meta)``: the method's item table within the budget, and
#: what to record about it in the student's checkpoint.
TableBuilder = Callable[[SessionRecommender, int], tuple[ItemTable, dict[str, Any]]]
#: ``factory(table) -> on_step``: a per-step training hook for the built table (e.g. a code refresher), or None.
StepHookFactory = Callable[[ItemTable], Callable[[int], None] | None]


@dataclass
class RecipeConfig:
    """The keys every ``pocketrec compress --method M`` config starts with; methods add their own."""

    teacher: str = ""
    dataset: str = ""
    budget: str = "3%"
    out: str = ""
    #: stored precision of the student table's float weights (float16 halves them: more capacity per byte)
    dtype: str = "float32"
    #: the precisions the method's table can store (codebooks add int8)
    stored_dtypes: ClassVar[tuple[str, ...]] = STORED_FLOAT_DTYPES

    def __post_init__(self) -> None:
        check_stored_dtype(self.dtype, self.stored_dtypes)


@dataclass
class CompressResult:
    """What a compression run reached: bytes, ratio, metrics, and the fit record (``None`` for a post-hoc
    baseline, which does not train)."""

    fit: FitResult | None
    test: dict[str, float]
    table_bytes: int
    dense_table_bytes: int
    meta: dict[str, Any]

    @property
    def ratio(self) -> float:
        return self.dense_table_bytes / self.table_bytes


def distill_to_budget(method: str, teacher_checkpoint: str | Path, dataset: Dataset, budget: str | int,
                      build_table: TableBuilder, *, out_dir: str | Path | None = None,
                      distill: DistillConfig | None = None, train: TrainConfig | None = None,
                      step_hook: StepHookFactory | None = None,
                      ) -> tuple[SessionRecommender, CompressResult]:
    """Run the shared recipe (module docstring) for ``method``; returns the best student and its result.

    ``step_hook(table)`` may return a hook the trainer calls after every optimiser step; if it has a
    ``close()``, that runs when training ends.

    ``out_dir`` gets ``best/`` and ``last/`` student checkpoints (meta: ``method``, the teacher path,
    ``table_bytes``, ``dense_table_bytes``, ``ratio`` and the builder's meta). A teacher of another dataset
    raises :class:`~pocketrec.train.checkpoint.CheckpointError`; a budget no table fits, ``ValueError``.
    """
    distill = distill or DistillConfig()
    train = train or TrainConfig()
    teacher_checkpoint = Path(teacher_checkpoint)
    teacher, teacher_meta = load_checkpoint(teacher_checkpoint)
    check_compatible(teacher_meta, dataset, what=f"teacher {teacher_checkpoint}")
    dense_bytes = DenseTable.bytes_for(teacher.num_items, teacher.config.dim)
    budget_bytes = parse_budget(budget, dense_bytes)

    seed_everything(train.seed)
    table, table_meta = build_table(teacher, budget_bytes)
    student = SessionRecommender(teacher.config, table)
    prepare_student(student, teacher, distill)
    loss = distillation_loss(student, teacher, hot_item_mask(dataset.item_counts(), distill.hot_ratio), distill)

    table_bytes = table.nbytes()
    meta = {**dataset_meta(dataset), "method": method, "teacher": str(teacher_checkpoint),
            "teacher_test": teacher_meta.get("test"), "table_bytes": table_bytes, "dense_table_bytes": dense_bytes,
            "ratio": dense_bytes / table_bytes, "budget_bytes": budget_bytes, **table_meta,
            "distill": to_dict(distill)}
    on_step = step_hook(table) if step_hook is not None else None
    try:
        fit = run_training(student, dataset, train, out_dir, loss, meta, parameters=loss.param_groups(train.lr),
                           on_step=on_step)
    finally:
        if on_step is not None and hasattr(on_step, "close"):
            on_step.close()
    return student, CompressResult(fit=fit, test=fit.history[-1]["test"], table_bytes=table_bytes,
                                   dense_table_bytes=dense_bytes, meta=meta)


def teacher_rows(teacher: SessionRecommender) -> Any:
    """The teacher's item rows ``(num_items + 1, dim)``, detached: what student tables are fitted to."""
    import torch

    with torch.no_grad():
        return teacher.table.all_rows().detach().clone()
