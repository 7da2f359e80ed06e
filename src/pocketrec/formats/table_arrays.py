"""Checks and decoders of exported item-table arrays (numpy only), shared by the torch tables and the
numpy runtime so that both read a table's stored arrays the same way."""

from __future__ import annotations

import numpy as np


def check_slots(slots: np.ndarray, num_items: int, num_slots: int) -> None:
    """``ValueError`` unless ``slots`` is a TT item order: ``(num_items + 1,)``, ``slots[0] = 0`` (the padding
    id), the items' slots distinct and in ``1..num_slots - 1``."""
    if slots.shape != (num_items + 1,):
        raise ValueError(f"slots must have shape ({num_items + 1},), got {tuple(slots.shape)}")
    if int(slots[0]) != 0:
        raise ValueError(f"slots[0] (the padding id) must be 0, got {int(slots[0])}")
    if slots.size > 1 and (int(slots[1:].min()) < 1 or int(slots.max()) >= num_slots):
        raise ValueError(f"item slots must lie in 1..{num_slots - 1}")
    if np.unique(slots).size != slots.size:
        raise ValueError("slots must be distinct (two items would share a TT row)")


def dequantized_codebooks(arrays: dict[str, np.ndarray], dtype: str) -> np.ndarray:
    """Exported codebooks as float32 ``(M, K, dim)``: int8 ones times their ``codebook_scales (M, K)``."""
    books = arrays["codebooks"]
    if (books.dtype == np.int8) != (dtype == "int8"):
        raise ValueError(f"codebooks are {books.dtype} but the table's dtype is {dtype!r}")
    if dtype != "int8":
        return np.asarray(books, dtype=np.float32)
    scales = np.asarray(arrays["codebook_scales"], dtype=np.float32)
    if scales.shape != books.shape[:2]:
        raise ValueError(f"codebook_scales have shape {scales.shape}, expected {books.shape[:2]}")
    return books.astype(np.float32) * scales[..., None]


#: the largest lookup table of a group of codebooks, in entries (float32: 4 bytes each); see :func:`lut_groups`
MAX_GROUP_LUT = 65536


def lut_groups(M: int, K: int, num_items: int, max_lut: int) -> list[list[int]]:
    """Codebooks ``0..M-1`` cut into consecutive groups of ``g``, the largest ``g`` with ``K**g <= max_lut`` (and
    ``K**g`` no more than the catalogue, since a group's lookup table larger than the catalogue costs more to build
    than it saves): scoring sums one lookup per *group* (the outer sum of its members' tables) instead of one per
    codebook. The numpy scorer and the ONNX graph group alike."""
    size = 1
    cap = min(int(max_lut), max(int(K), int(num_items)))
    while size < M and K ** (size + 1) <= cap:
        size += 1
    return [list(range(start, min(start + size, M))) for start in range(0, M, size)]
