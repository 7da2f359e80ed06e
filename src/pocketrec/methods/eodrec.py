"""EODRec: a compositional-code (codebook) student distilled from a dense teacher.

Paper: Xia, Yin, Yu, Wang, Xu, Nguyen, "Efficient On-Device Session-Based Recommendation", ACM TOIS 41(4),
2023 (arXiv 2209.13422); code ``github.com/xiaxin1998/EODRec``.

Recipe (docs/methods/eodrec.md), through the shared :func:`~pocketrec.methods.recipe.distill_to_budget`:

1. the budget solver picks ``M`` codebooks of ``K`` codewords (:meth:`CodebookTable.config_for_budget`:
   the most code bits per item that fit, codebooks and codes both counted; by default codes bit-packed,
   codebooks stored (and trained, straight-through) in float16, up to 48 codebooks — accuracy follows code
   bits per item, and these buy the most of them per byte);
2. phase 1, codes from the teacher's item vectors (``codes``):

   * ``"rq"`` (default): pocketrec's residual k-means with least-squares codebooks; any quantizer of
     :mod:`pocketrec.quantize` by name (``"rq-icm"``, ``"pq"``, and with the ``faiss`` extra ``"faiss-rq"``,
     ``"faiss-lsq"``, ``"faiss-prq"``, ``"faiss-pq"``);
   * ``"ranked"``: every quantizer of ``code_candidates`` fitted, each judged by the teacher's encoder scoring the
     validation split over its table (zero-shot Recall@20), the best kept (:mod:`pocketrec.methods.code_ranking`);
   * ``"learned"``: the paper's Gumbel straight-through autoencoder (:mod:`pocketrec.train.codes`), initialised
     from residual k-means, keeping whichever codes reconstruct the teacher best. It was the default until every
     recorded run (Tmall, Diginetica, 10x and 40x) kept its initialisation (``used_learned: false``, no code
     changed) after minutes of training: the quantizer is the default now, the autoencoder the paper's option;
   * ``"gumbel"``: the autoencoder's final argmax codes, no selection (closest to the paper);

3. phase 2, the codes are frozen and the codebooks, the student's encoder and the recombination heads
   train with the distillation loss: teacher -> student KL, the hot/cold recombination InfoNCE in both
   directions (``DistillConfig.bidirectional``, on by default here), no predictive term (the authors
   define it but leave it out), and optionally the teacher learning from the student
   (``DistillConfig.teacher_lr > 0``, off by default; see :mod:`pocketrec.train.distill`);
4. optionally (``code_refresh.every > 0``, off by default) the codes keep moving in phase 2: every
   ``every`` steps each item's codes take a proximal step along its row's loss gradient
   (:mod:`pocketrec.train.code_refresh`).

What differs from the authors' code (docs/methods/eodrec.md), on purpose: the student is truly compressed (no
``(1 - η)`` share of the teacher table, ever); codes are stored as integers (uint8/uint16 or bit-packed)
and counted by ``nbytes()``; every trainable part is in the optimiser; codes are the argmax of a converged
encoder, not one noisy Gumbel sample after one epoch; KL mean-reduced (λ weighs a per-example KL);
selection on validation, test at the chosen epoch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from pocketrec.data.dataset import Dataset
from pocketrec.methods.code_ranking import DEFAULT_CANDIDATES, quantized_table, rank_codes, relative_error
from pocketrec.methods.recipe import CompressResult, RecipeConfig, distill_to_budget, teacher_rows
from pocketrec.models.session_encoder import SessionRecommender
from pocketrec.quantize import QUANTIZERS
from pocketrec.tables.base import STORED_DTYPES, ItemTable
from pocketrec.tables.codebook import DEFAULT_MAX_CODEBOOKS, CodebookTable
from pocketrec.train.code_refresh import CodeRefreshConfig, CodeRefresher
from pocketrec.train.codes import learn_codes_with_report
from pocketrec.train.distill import DistillConfig
from pocketrec.train.trainer import TrainConfig

METHOD = "eodrec"
#: where phase 1's codes come from (module docstring): a quantizer by name, ``ranked``, or the autoencoder
CODE_SOURCES = (*QUANTIZERS, "ranked", "learned", "gumbel")
#: Stored precision of the codebooks: float16 halves their bytes, which the budget solver spends on code bits.
DEFAULT_DTYPE = "float16"


def eodrec_distill_defaults() -> DistillConfig:
    """EODRec's loss: CE + KL + bidirectional recombination InfoNCE (β = 0.1, the authors'), no predictive term."""
    return DistillConfig(cl_weight=0.1, use_pred=False, bidirectional=True)


@dataclass
class EODRecConfig(RecipeConfig):
    """Everything ``pocketrec compress --method eodrec`` reads (overridable as ``--key=value``).

    ``M``/``K`` (0: chosen by the budget solver), ``bitpack`` (codes at ``ceil(log2 K)`` bits), ``dtype``
    (stored precision of the codebooks: ``float16`` halves their bytes, ``int8`` quarters them, leaving more
    for codes),
    ``max_codebooks`` (bounds the ``n x M`` gather of a score), ``codes`` (see the module docstring),
    ``code_candidates`` (comma-separated quantizers that ``codes=ranked`` compares), ``code_epochs`` (autoencoder
    epochs), ``code_refresh`` (codes re-assigned during distillation; off).
    """

    stored_dtypes: ClassVar[tuple[str, ...]] = STORED_DTYPES
    budget: str = "2.5%"
    M: int = 0
    K: int = 0
    bitpack: bool = True
    dtype: str = DEFAULT_DTYPE
    max_codebooks: int = DEFAULT_MAX_CODEBOOKS
    codes: str = "rq"
    code_candidates: str = ",".join(DEFAULT_CANDIDATES)
    code_epochs: int = 10
    code_refresh: CodeRefreshConfig = field(default_factory=CodeRefreshConfig)
    distill: DistillConfig = field(default_factory=eodrec_distill_defaults)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_codebook_layout(self)


def check_codebook_layout(cfg: Any) -> None:
    """``ValueError`` unless a config's codebook layout keys are valid: ``M``/``K`` >= 0 (0: the budget
    solver's), ``max_codebooks`` >= 1 and, for a config whose codes are learned (``codes``, ``code_epochs``),
    a known code source and ``code_epochs`` >= 0. Shared by every config that builds
    :func:`codebook_table_builder` tables (EODRec, the k-means baselines, the CF codebook student)."""
    if not hasattr(cfg, "codes"):
        if cfg.M < 0 or cfg.K < 0 or cfg.max_codebooks < 1:
            raise ValueError("M and K must be >= 0 (0: chosen by the budget solver) and max_codebooks >= 1")
        return
    if cfg.codes not in CODE_SOURCES:
        raise ValueError(f"codes must be one of {CODE_SOURCES}, got {cfg.codes!r}")
    if hasattr(cfg, "code_candidates"):
        candidates_of(cfg)
    if cfg.M < 0 or cfg.K < 0 or cfg.max_codebooks < 1 or cfg.code_epochs < 0:
        raise ValueError("M, K and code_epochs must be >= 0 (0 for M/K: chosen by the budget solver) and "
                         "max_codebooks >= 1")


def codebook_table_builder(M: int = 0, K: int = 0, bitpack: bool = True,
                           max_codebooks: int = DEFAULT_MAX_CODEBOOKS, codes: str = "rq", code_epochs: int = 10,
                           seed: int = 0, dtype: str = DEFAULT_DTYPE, progress: bool = False,
                           dataset: Dataset | None = None, candidates: tuple[str, ...] = DEFAULT_CANDIDATES):
    """The EODRec :data:`~pocketrec.methods.recipe.TableBuilder`: ``(M, K)`` for the budget, codes and
    codebooks fitted to the teacher's rows (``progress``: a bar over the code learning's epochs).
    ``codes="ranked"`` needs the ``dataset`` (its validation split judges the ``candidates``)."""
    if codes not in CODE_SOURCES:
        raise ValueError(f"codes must be one of {CODE_SOURCES}, got {codes!r}")
    if codes == "ranked" and dataset is None:
        raise ValueError("codes=ranked judges the candidates on validation: it needs the dataset")

    def build(teacher: SessionRecommender, budget_bytes: int) -> tuple[CodebookTable, dict[str, Any]]:
        m, k = CodebookTable.config_for_budget(teacher.num_items, teacher.config.dim, budget_bytes,
                                               dtype=dtype, bitpack=bitpack, M=M or None, K=K or None,
                                               max_codebooks=max_codebooks)
        rows = teacher_rows(teacher)
        report, extra = None, {}
        if codes in QUANTIZERS:
            table, extra = quantized_table(codes, rows, m, k, dtype, bitpack, seed)
        elif codes == "ranked":
            log = (lambda line: tqdm.write(line, file=sys.stderr)) if progress else None
            table, ranked = rank_codes(teacher, dataset, rows, m, k, tuple(candidates), dtype, bitpack, seed, log=log)
            extra = {"code_candidates": ranked, **next(r for r in ranked if r.get("chosen"))}
            extra.pop("chosen")
        else:
            table, learned = learn_codes_with_report(rows, m, k, epochs=code_epochs, seed=seed, dtype=dtype,
                                                     bitpack=bitpack, select_best=codes == "learned",
                                                     progress=progress)
            report = learned.to_dict()
            report.pop("train_loss")
            extra = {"layout": f"AE{m}x{table.code_bits}", "code_error": relative_error(table, rows)}
        return table, {"M": m, "K": k, "bitpack": bitpack, "dtype": dtype, "codes": codes,
                       "code_mse": table.reconstruction_error(rows), "code_learning": report, **extra}
    return build


def codebook_table_for_budget(num_items: int, dim: int, budget_bytes: int, seed: int = 0) -> CodebookTable:
    """A fresh (random) codebook table in the recipe's default layout for a budget: the EODRec table of the
    speed and memory benchmarks, which do not depend on trained weights."""
    defaults = EODRecConfig()  # the layout keys' one source: dtype, bitpack, max_codebooks
    return CodebookTable.for_budget(num_items, dim, budget_bytes, dtype=defaults.dtype, bitpack=defaults.bitpack,
                                    max_codebooks=defaults.max_codebooks, seed=seed)


def compress_eodrec(teacher_checkpoint: str | Path, dataset: Dataset, budget: str | int, *, M: int = 0, K: int = 0,
                    bitpack: bool = True, max_codebooks: int = DEFAULT_MAX_CODEBOOKS, codes: str = "rq",
                    code_epochs: int = 10, dtype: str = DEFAULT_DTYPE, out_dir: str | Path | None = None,
                    code_candidates: tuple[str, ...] = DEFAULT_CANDIDATES,
                    distill: DistillConfig | None = None, train: TrainConfig | None = None,
                    code_refresh: CodeRefreshConfig | None = None) -> tuple[SessionRecommender, CompressResult]:
    """Compress the teacher at ``teacher_checkpoint`` into an EODRec student of at most ``budget`` bytes.

    ``budget`` as for :func:`~pocketrec.methods.odrec.compress_odrec` (default ratio 2.5% = 40x). See
    :func:`~pocketrec.methods.recipe.distill_to_budget` for the checkpoints written and errors raised.
    """
    train = train or TrainConfig()
    refresh = code_refresh or CodeRefreshConfig()
    base_builder = codebook_table_builder(M, K, bitpack, max_codebooks, codes, code_epochs, seed=train.seed,
                                          dtype=dtype, progress=train.progress, dataset=dataset,
                                          candidates=tuple(code_candidates))

    def builder(teacher: SessionRecommender, budget_bytes: int) -> tuple[ItemTable, dict]:
        table, meta = base_builder(teacher, budget_bytes)
        return table, {**meta, "code_refresh": {"every": refresh.every, "trust": refresh.trust}}

    def step_hook(table: ItemTable) -> CodeRefresher | None:
        if not refresh.every:
            return None
        return CodeRefresher(table, refresh, log=lambda msg: tqdm.write(msg, file=sys.stderr))

    return distill_to_budget(METHOD, teacher_checkpoint, dataset, budget, builder, out_dir=out_dir,
                             distill=distill or eodrec_distill_defaults(), train=train, step_hook=step_hook)


def compress_from_config(cfg: EODRecConfig, dataset: Dataset) -> tuple[SessionRecommender, CompressResult]:
    """:func:`compress_eodrec` driven by an :class:`EODRecConfig` (the CLI's entry point)."""
    if not cfg.teacher:
        raise ValueError("no teacher checkpoint given (--teacher runs/teacher-DATASET/best)")
    return compress_eodrec(cfg.teacher, dataset, cfg.budget, M=cfg.M, K=cfg.K, bitpack=cfg.bitpack,
                           max_codebooks=cfg.max_codebooks, codes=cfg.codes, code_epochs=cfg.code_epochs,
                           dtype=cfg.dtype, out_dir=cfg.out or None, distill=cfg.distill, train=cfg.train,
                           code_refresh=cfg.code_refresh, code_candidates=candidates_of(cfg))


def candidates_of(cfg: Any) -> tuple[str, ...]:
    """The quantizers of ``cfg.code_candidates`` (comma-separated), checked."""
    names = tuple(n.strip() for n in str(getattr(cfg, "code_candidates", "")).split(",") if n.strip())
    unknown = [n for n in names if n not in QUANTIZERS]
    if unknown or not names:
        raise ValueError(f"code_candidates must name quantizers of {', '.join(QUANTIZERS)}, got "
                         f"{getattr(cfg, 'code_candidates', '')!r}")
    return names
