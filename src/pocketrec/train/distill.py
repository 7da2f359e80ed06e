"""Self-supervised knowledge distillation from a frozen teacher (OD-Rec; reused by EODRec).

The loss (docs/methods/odrec.md, without the bugs of the authors' code) is

    L = (1 - λ) L_rec + λ L_KD + β L_CL + α L_pred

* ``L_rec``: catalogue cross-entropy of the student's logits at every target position.
* ``L_KD``: KL(teacher || student) of the catalogue distributions at every target position, at
  temperature ``kd_temperature`` (scaled by T²). The teacher runs in eval mode under ``no_grad`` (the
  authors' code forgets to detach). **Mean-reduced** over examples, whereas the authors
  *sum* over their batch of 100, which makes their λ = 0.8 an effective weight of about 80 against the
  mean-reduced CE. Here λ = 0.8 (default) weighs a per-example KL, so the CE and KL are balanced
  0.2 : 0.8 per example whatever the batch size. The padding column is left out of the KL.
* ``L_CL``: InfoNCE (cosine, τ = ``cl_temperature``) between the recombined views ``v_S``, ``v_T`` of
  :mod:`pocketrec.train.recombination`; the other prefixes of the batch are the negatives. With
  ``bidirectional`` the loss is the mean of the two directions (``v_S`` anchors against all ``v_T`` and
  ``v_T`` against all ``v_S``), one reading of EODRec's "bidirectional" (docs/methods/eodrec.md); averaging
  keeps β's scale.
* ``L_pred``: ``CE(score_S(W_c[r_S_hot; r_T_cold]), y) + CE(score_T(W_d[r_T_hot; r_S_cold]), y)``, the
  hot-only / cold-only prefixes contributing the symmetric swap ``CE(score_S(z_T), y) + CE(score_T(z_S), y)``
  (the authors pass these in a scrambled order). ``score_M(v)`` ranks the catalogue with
  model M's own table and scoring convention: the paper's ``norm(v) · Eᵀ`` for raw dot-product models,
  and the cosine ``scale · cos(v, e)`` of :meth:`SessionRecommender.item_scores` when the encoder
  normalises (``EncoderConfig.normalize``).

SSL prefixes. By default only the longest prefix of each batch row (``ssl_positions="last"``) feeds
``L_CL`` and ``L_pred``, which bounds their cost at one prefix per row; ``"all"`` uses every target.

What is trained. The student (table and encoder) and the :class:`RecombinationHeads`: the four
sub-session readouts (the teacher-side ``teacher_hot``/``teacher_cold`` included -- the authors never
train them) and ``W_a..W_d``. The teacher's encoder and item table are frozen
(``requires_grad_(False)``) unless ``teacher_lr > 0``. The optimiser is built by the trainer *after* all of these exist
(:meth:`DistillationLoss.param_groups`), unlike the authors' code (built first, those never train). The heads are
training-only: checkpoints hold the student alone.

Student -> teacher (``teacher_lr > 0``, off by default). EODRec calls its distillation *bidirectional*;
the authors' code never updates the teacher (docs/methods/eodrec.md). With ``teacher_lr > 0`` the
teacher learns from the student too, mutual-learning style: an extra term ``s2t = (1 - λ) CE_T +
λ KL(student || teacher)`` whose gradient reaches only the teacher (its own optimizer group at
``teacher_lr``, the student's side held constant), still in eval mode (no dropout). The teacher is a
training-time helper: only the student is saved, so a changed teacher is never shipped. The other
"bidirectional" element, InfoNCE with both views as anchors, is ``bidirectional``.

``init_student_encoder_from_teacher`` (default on) copies every non-table weight of the teacher
(positions, Transformer, readout) into the student before training. This is a toolkit choice, not the
paper's (the authors start the student from scratch): the student has the same encoder, so starting
from the teacher's leaves only the compressed table to learn and speeds convergence a lot.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pocketrec.data.batching import Batch
from pocketrec.models.session_encoder import SessionRecommender
from pocketrec.train.catalogue_loss import catalogue_cross_entropy, catalogue_losses
from pocketrec.train.checkpoint import copy_weights
from pocketrec.train.distributed import is_distributed, shard_weights
from pocketrec.train.losses import info_nce
from pocketrec.train.recombination import POSITIONS, RecombinationHeads, select_positions, split_prefixes

TERMS = ("rec", "kd", "cl", "pred")
#: ``s2t``: the student -> teacher direction, on only when ``teacher_lr > 0`` (the teacher then learns).
ALL_TERMS = (*TERMS, "s2t")


@dataclass
class DistillConfig:
    """Weights and switches of the distillation loss (see the module docstring).

    ``kd_weight`` is λ: the CE gets ``1 - λ`` and the KL ``λ``. ``cl_weight`` is β, ``pred_weight`` α (the
    authors' 0.2 and 0.001). Each ``use_*`` switch removes its term (and its part of the logged parts).

    ``encoder_lr`` is the learning rate of the student's encoder (every student weight outside its item
    table): ``None`` trains it at the trainer's ``lr`` with the table, ``0`` freezes it so that only the
    table (and the recombination heads) learn. The student's encoder starts as a copy of the teacher's
    trained one (``init_student_encoder_from_teacher``), so a smaller rate keeps it near that optimum.
    """

    kd_weight: float = 0.8
    cl_weight: float = 0.2
    pred_weight: float = 0.001
    kd_temperature: float = 1.0
    cl_temperature: float = 0.2
    hot_ratio: float = 0.2
    use_rec: bool = True
    use_kd: bool = True
    use_cl: bool = True
    use_pred: bool = True
    bidirectional: bool = False
    teacher_lr: float = 0.0
    ssl_positions: str = "last"
    init_student_encoder_from_teacher: bool = True
    encoder_lr: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= self.kd_weight <= 1.0:
            raise ValueError(f"kd_weight (λ) must lie in [0, 1], got {self.kd_weight}")
        for name in ("cl_weight", "pred_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("kd_temperature", "cl_temperature"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.teacher_lr < 0:
            raise ValueError(f"teacher_lr must be >= 0 (0 keeps the teacher frozen), got {self.teacher_lr}")
        if self.encoder_lr is not None and self.encoder_lr < 0:
            raise ValueError(f"encoder_lr must be >= 0 (0 freezes the student's encoder) or None, "
                             f"got {self.encoder_lr}")
        if not 0.0 <= self.hot_ratio <= 1.0:
            raise ValueError(f"hot_ratio must lie in [0, 1], got {self.hot_ratio}")
        if self.ssl_positions not in POSITIONS:
            raise ValueError(f"ssl_positions must be one of {POSITIONS}, got {self.ssl_positions!r}")
        if not any(self.enabled(t) for t in TERMS):
            raise ValueError("every distillation term is switched off; enable at least one of use_rec, use_kd, "
                             "use_cl, use_pred")

    def enabled(self, term: str) -> bool:
        if term == "s2t":
            return self.teacher_lr > 0
        return bool(getattr(self, f"use_{term}")) and self.weight(term) > 0

    def weight(self, term: str) -> float:
        return {"rec": 1.0 - self.kd_weight, "kd": self.kd_weight, "cl": self.cl_weight,
                "pred": self.pred_weight, "s2t": 1.0}[term]


def check_pair(student: SessionRecommender, teacher: SessionRecommender) -> None:
    """Refuse a student and teacher that cannot be distilled (different catalogue or width)."""
    if student.num_items != teacher.num_items:
        raise ValueError(f"student has {student.num_items:,} items but the teacher has {teacher.num_items:,}")
    if student.config.dim != teacher.config.dim:
        raise ValueError(f"student dim={student.config.dim} differs from the teacher's dim={teacher.config.dim}; "
                         "the recombined views mix both models' vectors and need the same width")


def prepare_student(student: SessionRecommender, teacher: SessionRecommender, config: DistillConfig) -> list[str]:
    """Apply ``init_student_encoder_from_teacher``; returns the names of the copied weights."""
    check_pair(student, teacher)
    if not config.init_student_encoder_from_teacher:
        return []
    with torch.no_grad():
        return copy_weights(teacher, student, skip_prefix="table.")


def _as_query(model: SessionRecommender, vectors: Tensor) -> Tensor:
    """Free vectors as ``model`` queries: cosine x scale when it normalises, else the paper's norm(v)."""
    if model.config.normalize:
        return model._finish(vectors)
    return F.normalize(vectors, dim=-1)


class DistillationLoss(nn.Module):
    """``loss_fn(batch) -> (loss, parts)`` for :func:`pocketrec.train.teacher.run_training`.

    Holds the :class:`RecombinationHeads` (``heads``), so ``param_groups()`` can hand the trainer the
    student's and the heads' parameters together. The teacher is stored outside the module tree (it
    is frozen and must not be saved or optimised with the heads).
    """

    def __init__(self, student: SessionRecommender, teacher: SessionRecommender, hot_mask: Tensor,
                 config: DistillConfig) -> None:
        super().__init__()
        check_pair(student, teacher)
        hot_mask = torch.as_tensor(hot_mask, dtype=torch.bool)
        if hot_mask.shape != (student.num_items + 1,):
            raise ValueError(f"hot_mask must have num_items + 1 = {student.num_items + 1} entries, "
                             f"got {tuple(hot_mask.shape)}")
        self.student = student
        self.config = config
        self.__dict__["teacher"] = teacher  # not a submodule: never saved with the heads
        teacher.requires_grad_(config.enabled("s2t"))
        teacher.eval()
        if config.encoder_lr == 0:  # frozen: no gradients for the encoder (they still reach the table)
            for param in student.encoder_parameters():
                param.requires_grad_(False)
        self.register_buffer("hot_mask", hot_mask, persistent=False)
        self.heads = RecombinationHeads(student.config.dim)

    def param_groups(self, lr: float | None = None) -> list[dict[str, Any]]:
        """Optimizer parameter groups: the student's trainable parameters and the heads' (at the trainer's
        ``lr``; the student's encoder at ``encoder_lr`` when set, left out when it is 0), and with
        ``teacher_lr > 0`` the teacher's at ``teacher_lr``."""
        encoder_lr = self.config.encoder_lr
        encoder = [p for p in self.student.encoder_parameters() if p.requires_grad]
        params = [p for p in self.student.table.parameters() if p.requires_grad]
        if encoder_lr is None:
            params += encoder
        if self.config.use_cl or self.config.use_pred:
            params += list(self.heads.parameters())
        groups: list[dict[str, Any]] = [{"params": params}]
        if encoder_lr:
            groups.append({"params": encoder, "lr": encoder_lr})
        if self.config.enabled("s2t"):
            groups.append({"params": list(self.teacher.parameters()), "lr": self.config.teacher_lr})
        return groups

    def terms(self, batch: Batch) -> dict[str, Tensor]:
        """Each enabled term, unweighted, as a differentiable scalar.

        Under ``torch.distributed`` (``batch`` a rank's slice of the global batch) each term is this rank's
        share of the global batch's term: its means over the slice weighted by
        :func:`~pocketrec.train.distributed.shard_weights`, InfoNCE's negatives gathered from every rank,
        so that DDP's average of the gradients is the single-process gradient.
        """
        cfg, student, teacher = self.config, self.student, self.teacher
        teacher.eval()
        self.heads.train(student.training)
        mask = batch.target_mask
        targets = batch.targets[mask]
        teacher_learns = cfg.enabled("s2t") and torch.is_grad_enabled()
        teacher_grad = torch.enable_grad if teacher_learns else torch.no_grad
        z_s_all = student.prefix_queries(batch.inputs)
        with teacher_grad():
            z_t_all = teacher.prefix_queries(batch.inputs)
        ssl = cfg.enabled("cl") or cfg.enabled("pred")
        out: dict[str, Tensor] = {}
        if ssl:
            rows, cols = select_positions(mask, cfg.ssl_positions)
            split = split_prefixes(batch.inputs, rows, cols, self.hot_mask)
        sharded = is_distributed()
        if sharded:  # every rank, every step, the same collectives: the all-ranks counts of the means
            target_weight, ssl_weight = shard_weights(len(targets), int(split.used.sum()) if ssl else 0)

        student_rows = student.scoring_rows()
        with teacher_grad():
            teacher_rows = teacher.scoring_rows()
        if cfg.enabled("rec") or cfg.enabled("kd"):
            kd = cfg.enabled("kd")
            rec, kl = catalogue_losses(z_s_all[mask], student_rows, targets,
                                       teacher_queries=z_t_all[mask] if kd else None,
                                       teacher_rows=teacher_rows if kd else None, temperature=cfg.kd_temperature)
            if sharded:
                rec, kl = rec * target_weight, kl * target_weight
            if cfg.enabled("rec"):
                out["rec"] = rec
            if kd:
                out["kd"] = kl
        if teacher_learns:
            # Student -> teacher: the teacher's own CE and KL(student || teacher), weighted like the forward
            # direction's; the student side is a constant here.
            rec_t, kl_t = catalogue_losses(z_t_all[mask], teacher_rows, targets, teacher_queries=z_s_all[mask],
                                           teacher_rows=student_rows, temperature=cfg.kd_temperature)
            out["s2t"] = (1.0 - cfg.kd_weight) * rec_t + cfg.kd_weight * kl_t
            if sharded:
                out["s2t"] = out["s2t"] * target_weight
        if ssl:
            used = split.used
            if bool(used.any()):
                z_s, z_t = z_s_all[rows, cols], z_t_all[rows, cols]
                student_emb = student.table(split.items)
                with teacher_grad():
                    teacher_emb = teacher.table(split.items)
                parts = self.heads.readouts(split, student_emb, teacher_emb)
                y_ssl = batch.targets[rows, cols][used]
                if cfg.enabled("cl"):
                    v_s, v_t = self.heads.contrastive_views(parts, split, z_s, z_t)
                    cl = info_nce(v_s, v_t, cfg.cl_temperature)
                    if cfg.bidirectional:
                        cl = 0.5 * (cl + info_nce(v_t, v_s, cfg.cl_temperature))
                    out["cl"] = cl
                if cfg.enabled("pred"):
                    p_s, p_t = self.heads.predictive_views(parts, split, z_s, z_t)
                    out["pred"] = (catalogue_cross_entropy(_as_query(student, p_s), student_rows, y_ssl)
                                   + catalogue_cross_entropy(_as_query(teacher, p_t), teacher_rows, y_ssl))
                    if sharded:
                        out["pred"] = out["pred"] * ssl_weight
            else:
                for term in ("cl", "pred"):
                    if cfg.enabled(term):
                        out[term] = z_s_all.sum() * 0.0  # no usable prefix in this batch
                if sharded and cfg.enabled("cl"):  # the other ranks gather this rank's (no) rows
                    none = z_s_all.reshape(-1, z_s_all.shape[-1])[:0]
                    out["cl"] = out["cl"] + info_nce(none, none, cfg.cl_temperature)
                    if cfg.bidirectional:
                        out["cl"] = out["cl"] + info_nce(none, none, cfg.cl_temperature)
        return out

    def forward(self, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        terms = self.terms(batch)
        loss = sum(self.config.weight(name) * value for name, value in terms.items())
        return loss, {name: float(value.detach()) for name, value in terms.items()}


def distillation_loss(student: SessionRecommender, teacher: SessionRecommender, hot_mask: Tensor,
                      config: DistillConfig) -> DistillationLoss:
    """The distillation ``loss_fn`` for :func:`run_training`; pass ``loss.param_groups()`` as its
    ``parameters`` so the heads are optimised too. Freezes ``teacher``."""
    return DistillationLoss(student, teacher, hot_mask, config)
