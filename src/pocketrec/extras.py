"""Optional dependencies (pyproject's extras): one error type and one check, standard library only, so that the
device side (numpy runtime, fetch client) can use them without importing torch."""

from __future__ import annotations

import importlib


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed (a ``ValueError`` too, so the CLI shows one line)."""


def require(modules: tuple[str, ...], hint: str) -> None:
    """Raise :class:`MissingExtraError` with the one-line ``hint`` unless every module in ``modules`` imports."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtraError(hint) from None


FAISS_HINT = "this needs the faiss extra: pip install 'pocketrec[faiss]' (faiss-cpu)"


def load_faiss():  # noqa: ANN201 (the faiss module; typing it would import it)
    """The ``faiss`` module, or :class:`MissingExtraError` with the one-line install hint."""
    require(("faiss",), FAISS_HINT)
    import faiss

    return faiss
