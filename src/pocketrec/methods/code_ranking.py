"""Codes chosen by what they do to ranking (EODRec ``codes=ranked``).

Each candidate quantizer (:mod:`pocketrec.quantize`) fits the teacher's item rows in the layout the budget solver
chose; then the teacher's own encoder scores a sample of the validation split against the quantised table instead
of its own (zero-shot: nothing is trained) and the candidate with the best validation Recall@20 is the one
distilled. Reconstruction error alone is not the yardstick: the error that matters is the one that reorders the
catalogue for real queries. Every candidate's error, zero-shot figures and fitting time go in the run's meta.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from pocketrec.data.dataset import Dataset, SequenceSplit
from pocketrec.extras import MissingExtraError
from pocketrec.quantize import get_quantizer
from pocketrec.tables.codebook import CodebookTable

#: the candidates of ``codes=ranked``: pocketrec's residual k-means (with and without ICM) and FAISS's residual
#: (beam 8), product-residual and LSQ quantizers (the FAISS ones skipped, and said so, without the extra)
DEFAULT_CANDIDATES = ("rq", "rq-icm", "faiss-rq", "faiss-prq", "faiss-lsq")
#: validation sessions of the zero-shot evaluation (a seeded sample; all when fewer)
RANK_SESSIONS = 5000


def valid_sample(dataset: Dataset, sessions: int = RANK_SESSIONS, seed: int = 0) -> SequenceSplit:
    """A seeded sample of ``sessions`` validation sequences (all of them when there are fewer)."""
    split = dataset.valid
    if len(split) <= sessions:
        return split
    idx = np.sort(np.random.default_rng(seed).choice(len(split), size=sessions, replace=False))
    return SequenceSplit([split.sequences[i] for i in idx], split.first_target[idx])


def zero_shot(teacher: Any, table: CodebookTable, split: SequenceSplit) -> dict[str, float]:
    """Validation metrics of the teacher's encoder over ``table`` (the teacher itself is not changed)."""
    from pocketrec.eval.evaluate import evaluate
    from pocketrec.models.session_encoder import SessionRecommender
    from pocketrec.train.checkpoint import copy_weights

    model = SessionRecommender(teacher.config, table)
    copy_weights(teacher, model, skip_prefix="table.")
    return evaluate(model, split, ks=(20,))


def relative_error(table: CodebookTable, rows: Any) -> float:
    """``sum_i |x_i - e_i|^2 / sum_i |x_i|^2`` over items ``1..n`` at the table's stored precision."""
    norms = float((rows[1:].double() ** 2).sum(1).mean())
    return table.reconstruction_error(rows) / max(norms, 1e-30)


def quantized_table(name: str, rows: Any, M: int, K: int, dtype: str, bitpack: bool, seed: int
                    ) -> tuple[CodebookTable, dict[str, Any]]:
    """The codebook table of quantizer ``name`` fitted to ``rows (n + 1, d)`` and what it cost."""
    quantizer = get_quantizer(name)
    fitted = quantizer.fit(rows[1:].detach().float().cpu().numpy(), M, K, seed=seed)
    table = CodebookTable.from_codes(fitted.codebooks, fitted.codes, dtype=dtype, bitpack=bitpack, seed=seed)
    return table, {"quantizer": name, "layout": quantizer.layout(M, K), "code_error": relative_error(table, rows),
                   "fit_seconds": round(fitted.seconds, 2)}


def rank_codes(teacher: Any, dataset: Dataset, rows: Any, M: int, K: int, candidates: tuple[str, ...], dtype: str,
               bitpack: bool, seed: int = 0, sessions: int = RANK_SESSIONS,
               log: Callable[[str], None] | None = None) -> tuple[CodebookTable, list[dict[str, Any]]]:
    """The table of the candidate with the best zero-shot validation Recall@20, and every candidate's report
    (a candidate whose extra is missing is reported as skipped; ``ValueError`` when none runs)."""
    split = valid_sample(dataset, sessions, seed)
    best, reports = None, []
    for name in candidates:
        try:
            table, report = quantized_table(name, rows, M, K, dtype, bitpack, seed)
        except (MissingExtraError, ValueError) as err:
            reports.append({"quantizer": name, "skipped": str(err)})
            if log:
                log(f"codes: {name} skipped ({err})")
            continue
        started = time.perf_counter()
        report["zero_shot_valid"] = zero_shot(teacher, table, split)
        report["eval_seconds"] = round(time.perf_counter() - started, 2)
        reports.append(report)
        if log:
            log(f"codes: {report['layout']} ({name}) error {report['code_error']:.4f}, zero-shot valid Recall@20 "
                f"{100 * report['zero_shot_valid']['recall@20']:.2f} ({report['fit_seconds']:.0f} s)")
        if best is None or report["zero_shot_valid"]["recall@20"] > best[1]["zero_shot_valid"]["recall@20"]:
            best = (table, report)
    if best is None:
        raise ValueError("no code candidate could run: " + "; ".join(r["skipped"] for r in reports))
    for report in reports:
        report["chosen"] = report is best[1]
    return best[0], reports
