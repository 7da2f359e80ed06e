"""OD-Rec: a tensor-train student distilled from a dense teacher.

Paper: Xia, Yin, Yu, Wang, Xu, Nguyen, "On-Device Next-Item Recommendation with Self-Supervised
Knowledge Distillation", SIGIR 2022 (arXiv 2204.11091); code ``github.com/xiaxin1998/OD-Rec``.

Recipe (docs/methods/odrec.md):

1. load the teacher checkpoint (a session encoder with a dense item table) and refuse it if it was
   trained on another dataset;
2. build the student's item table, a semi-tensor-product tensor train
   (:class:`~pocketrec.tables.tt.TTTable`), with the largest TT rank that fits the byte budget;
3. optionally give the items a clustered TT order (``order="clustered"``,
   :func:`~pocketrec.tables.tt_order.clustered_slots`; the order's bytes come out of the budget), and
   warm-start the TT cores by least squares on the teacher's rows (``warm_start``);
4. build the student: the teacher's encoder shape with the TT table, its encoder weights copied from the
   teacher (``DistillConfig.init_student_encoder_from_teacher``);
5. train with the self-supervised distillation loss of :mod:`pocketrec.train.distill`
   (CE + KL + hot/cold-recombination InfoNCE + predictive CE), selecting the epoch on validation.

What differs from the authors' code (see docs/methods/odrec.md):

* the optimiser is built after every module exists, so the TT cores, readouts and projections train
  (the released student never updates them); the teacher-side hot/cold readouts are trained
  with the student (the authors never train them); the teacher's logits are detached;
* the KL is mean-reduced over examples instead of summed over a batch of 100 (λ = 0.8 then weighs a
  per-example KL); the predictive term's hot-only/cold-only swap is the symmetric one;
* one per-item TT layout in training and serving, any ``t``; the table is sized by a
  byte budget rather than by a fixed rank 60;
* toolkit choices the paper does not make: the student's encoder starts from the teacher's, and the
  cores may be warm-started from the teacher's table (both on by default, both switchable) -- they
  make short runs converge; the SSL terms use one prefix per batch row by default;
* model selection on a validation split, test reported at the chosen epoch; full ranking
  with ``torch.topk`` semantics and the padding id never ranked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pocketrec.data.dataset import Dataset
from pocketrec.methods.recipe import CompressResult, RecipeConfig, distill_to_budget, teacher_rows
from pocketrec.models.session_encoder import SessionRecommender
from pocketrec.tables.tt import TTTable
from pocketrec.tables.tt_order import clustered_slots
from pocketrec.train.distill import DistillConfig
from pocketrec.train.trainer import TrainConfig

METHOD = "odrec"


@dataclass
class ODRecConfig(RecipeConfig):
    """Everything ``pocketrec compress --method odrec`` reads (overridable as ``--key=value``)."""

    num_cores: int = 2
    t: int = 2
    warm_start: bool = True
    warm_start_steps: int = 300
    #: item -> TT index: "identity" (the dataset's ids) or "clustered" (items sharing a digit are alike)
    order: str = "identity"
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_cores < 2:
            raise ValueError(f"num_cores must be >= 2, got {self.num_cores}")
        if self.t < 1:
            raise ValueError(f"t must be >= 1, got {self.t}")
        if self.warm_start_steps < 0:
            raise ValueError(f"warm_start_steps must be >= 0, got {self.warm_start_steps}")
        check_order(self.order)


ORDERS = ("identity", "clustered")


def check_order(order: str) -> None:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")


def tt_table_builder(num_cores: int = 2, t: int = 2, warm_start: bool = True, warm_start_steps: int = 300,
                     seed: int = 0, dtype: str = "float32", order: str = "identity"):
    """The OD-Rec :data:`~pocketrec.methods.recipe.TableBuilder`: the largest TT table in the budget (with
    the item order's bytes reserved when ``order="clustered"``), its cores optionally fitted by least squares
    to the teacher's rows."""
    check_order(order)

    def build(teacher: SessionRecommender, budget_bytes: int) -> tuple[TTTable, dict[str, Any]]:
        ordered = order == "clustered"
        table = TTTable.for_budget(teacher.num_items, teacher.config.dim, budget_bytes, num_cores=num_cores, t=t,
                                   dtype=dtype, ordered=ordered)
        rows = teacher_rows(teacher)
        if ordered:
            table.set_slots(clustered_slots(rows[1:], table.item_factors, seed=seed))
        warm = warm_start and warm_start_steps > 0
        error = table.fit_to(rows, steps=warm_start_steps, seed=seed) if warm else None
        return table, {"num_cores": num_cores, "t": t, "tt_rank": table.rank, "dtype": dtype, "order": order,
                       "warm_start": warm, "warm_start_error": error}
    return build


def compress_odrec(teacher_checkpoint: str | Path, dataset: Dataset, budget: str | int, *, num_cores: int = 2,
                   t: int = 2, out_dir: str | Path | None = None, distill: DistillConfig | None = None,
                   train: TrainConfig | None = None, warm_start: bool = True, warm_start_steps: int = 300,
                   dtype: str = "float32", order: str = "identity") -> tuple[SessionRecommender, CompressResult]:
    """Compress the teacher at ``teacher_checkpoint`` into an OD-Rec student of at most ``budget`` bytes.

    ``budget``: bytes, or text for :func:`~pocketrec.search.budget.parse_budget` (``"3%"`` and ``"30x"`` are
    relative to the teacher's dense fp32 item table). See :func:`~pocketrec.methods.recipe.distill_to_budget`
    for the checkpoints written and the errors raised (a budget below the smallest TT table: ``ValueError``).
    """
    train = train or TrainConfig()
    builder = tt_table_builder(num_cores, t, warm_start, warm_start_steps, seed=train.seed, dtype=dtype, order=order)
    return distill_to_budget(METHOD, teacher_checkpoint, dataset, budget, builder, out_dir=out_dir,
                             distill=distill, train=train)


def compress_from_config(cfg: ODRecConfig, dataset: Dataset) -> tuple[SessionRecommender, CompressResult]:
    """:func:`compress_odrec` driven by an :class:`ODRecConfig` (the CLI's entry point)."""
    if not cfg.teacher:
        raise ValueError("no teacher checkpoint given (--teacher runs/teacher-DATASET/best)")
    return compress_odrec(cfg.teacher, dataset, cfg.budget, num_cores=cfg.num_cores, t=cfg.t,
                          out_dir=cfg.out or None, distill=cfg.distill, train=cfg.train, warm_start=cfg.warm_start,
                          warm_start_steps=cfg.warm_start_steps, dtype=cfg.dtype, order=cfg.order)
