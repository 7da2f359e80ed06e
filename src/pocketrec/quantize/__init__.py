"""Quantizers: arrays in, additive codes out (:mod:`pocketrec.quantize.base`). pocketrec's own k-means family
(:mod:`~pocketrec.quantize.ours`) and FAISS's (:mod:`~pocketrec.quantize.faiss_quantizers`, optional extra
``faiss``), found by name."""

from __future__ import annotations

from collections.abc import Callable

from pocketrec.quantize.base import AdditiveCodes, Quantizer
from pocketrec.quantize.faiss_quantizers import FaissAdditive, FaissProduct
from pocketrec.quantize.ours import KMeansQuantizer

#: name -> a fresh quantizer with its defaults
QUANTIZERS: dict[str, Callable[[], Quantizer]] = {
    "rq": lambda: KMeansQuantizer("rq"),
    "rq-icm": lambda: KMeansQuantizer("rq", icm_iters=3),
    "pq": lambda: KMeansQuantizer("pq"),
    "faiss-rq": lambda: FaissAdditive("rq", beam=8),
    "faiss-lsq": lambda: FaissAdditive("lsq"),
    "faiss-prq": lambda: FaissAdditive("prq", beam=8),
    "faiss-pq": lambda: FaissProduct(),
}


def get_quantizer(name: str) -> Quantizer:
    if name not in QUANTIZERS:
        raise ValueError(f"unknown quantizer {name!r} (known: {', '.join(QUANTIZERS)})")
    return QUANTIZERS[name]()


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["QUANTIZERS", "AdditiveCodes", "Quantizer", "faiss_available", "get_quantizer"]
