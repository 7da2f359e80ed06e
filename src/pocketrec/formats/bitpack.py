"""Bit-packing of integer codes; numpy only, so the on-device runtime can reuse it without torch.

Used by the compositional-code table (EODRec, TOIS 2023; codes after Shu & Nakayama 2018): each item
stores ``M`` codes in ``0..K-1``. Unpacked they take the smallest unsigned dtype that holds ``K - 1``
(:func:`code_dtype`); packed they take exactly ``bits = ceil(log2 K)`` bits each (:func:`bits_for`),
``ceil(count * bits / 8)`` bytes in all (:func:`packed_nbytes`), which is the storage docs/methods/eodrec.md counts.

Layout (fixed; the device artifact depends on it): the codes are taken in C order (item-major: all
``M`` codes of item 1, then item 2, ...), each code is written most-significant bit first, the bit
stream is cut into bytes most-significant bit first (``numpy.packbits`` with ``bitorder="big"``), and
the last byte is padded with zero bits.
"""

from __future__ import annotations

import numpy as np

# Values processed per chunk: a multiple of 8, so every chunk starts on a byte boundary whatever
# ``bits`` is, and the temporary ``chunk x bits`` uint8 bit matrix stays small (<= 8 MiB at 32 bits).
_CHUNK = 1 << 18


def bits_for(num_values: int) -> int:
    """Bits per code for codes in ``0..num_values-1`` (``ceil(log2 num_values)``, at least 1)."""
    if num_values < 2:
        raise ValueError(f"need at least 2 distinct code values, got {num_values}")
    return max(1, (int(num_values) - 1).bit_length())


def code_dtype(num_values: int) -> np.dtype:
    """Smallest unsigned integer dtype holding codes ``0..num_values-1`` (uint8, uint16 or uint32)."""
    if num_values < 2:
        raise ValueError(f"need at least 2 distinct code values, got {num_values}")
    for dtype in (np.uint8, np.uint16, np.uint32):
        if num_values - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"codes with {num_values} values do not fit in 32 bits")


def packed_nbytes(count: int, bits: int) -> int:
    """Bytes of ``count`` packed codes of ``bits`` bits each."""
    return (int(count) * int(bits) + 7) // 8


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 32:
        raise ValueError(f"bits must be in 1..32, got {bits}")


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack non-negative integer ``codes`` (any shape, read in C order) into a 1-D uint8 array.

    Every value must be below ``2**bits``. Returns ``packed_nbytes(codes.size, bits)`` bytes.
    """
    _check_bits(bits)
    flat = np.ascontiguousarray(codes).reshape(-1)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise TypeError(f"codes must be integers, got dtype {flat.dtype}")
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= (1 << bits)):
        raise ValueError(f"codes must lie in 0..{(1 << bits) - 1} to fit {bits} bits")
    out = np.empty(packed_nbytes(flat.size, bits), dtype=np.uint8)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start:start + _CHUNK].astype(np.uint32)
        bit_matrix = np.empty((chunk.size, bits), dtype=np.uint8)
        for col in range(bits):  # most-significant bit first
            bit_matrix[:, col] = (chunk >> np.uint32(bits - 1 - col)) & np.uint32(1)
        packed = np.packbits(bit_matrix.reshape(-1), bitorder="big")
        byte0 = start * bits // 8  # exact: start is a multiple of 8
        out[byte0:byte0 + packed.size] = packed
    return out


def unpack_codes(packed: np.ndarray, bits: int, count: int, dtype: np.dtype | None = None) -> np.ndarray:
    """Inverse of :func:`pack_codes`: the first ``count`` codes as a 1-D array.

    ``dtype`` defaults to the smallest unsigned dtype holding ``bits`` bits; reshape the result to
    ``(num_items, M)`` yourself.
    """
    _check_bits(bits)
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    need = packed_nbytes(count, bits)
    if packed.size < need:
        raise ValueError(f"{count} codes of {bits} bits need {need} bytes, got {packed.size}")
    out_dtype = np.dtype(dtype) if dtype is not None else code_dtype(1 << bits)
    out = np.empty(int(count), dtype=out_dtype)
    for start in range(0, int(count), _CHUNK):
        n = min(_CHUNK, int(count) - start)
        byte0 = start * bits // 8
        chunk_bytes = packed[byte0:byte0 + packed_nbytes(n, bits)]
        bit_matrix = np.unpackbits(chunk_bytes, count=n * bits, bitorder="big").reshape(n, bits)
        values = np.zeros(n, dtype=np.uint32)
        for col in range(bits):  # most-significant bit first
            values = (values << np.uint32(1)) | bit_matrix[:, col]
        out[start:start + n] = values
    return out


def pack_int4(values: np.ndarray) -> np.ndarray:
    """``(rows, d)`` int8 in ``-8..7`` -> ``(rows, ceil(d / 2))`` uint8, low nibble = even column."""
    rows, dim = values.shape
    padded = np.zeros((rows, dim + dim % 2), dtype=np.uint8)
    padded[:, :dim] = values.astype(np.int8).view(np.uint8) & 0x0F
    return padded[:, 0::2] | (padded[:, 1::2] << 4)


def unpack_int4(packed: np.ndarray, dim: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`: ``(rows, dim)`` int8."""
    nibbles = np.empty((packed.shape[0], packed.shape[1] * 2), dtype=np.uint8)
    nibbles[:, 0::2] = packed & 0x0F
    nibbles[:, 1::2] = packed >> 4
    signed = nibbles[:, :dim].astype(np.int8)
    signed[signed >= 8] -= 16
    return signed


def from_faiss_bitstrings(packed: np.ndarray, M: int, nbits: int) -> np.ndarray:
    """FAISS's bit strings ``(n, code_size)`` uint8 (code ``m`` at bits ``m*nbits ...`` of its row, least significant
    bit first: FAISS's ``BitstringWriter``, not this module's layout) -> ``(n, M)`` int64."""
    bits = np.unpackbits(packed, axis=1, bitorder="little")[:, :M * nbits].reshape(len(packed), M, nbits)
    return (bits.astype(np.int64) << np.arange(nbits)).sum(-1)
