"""Byte budgets as people write them: ``"3%"``, ``"30x"``, ``"200KB"``, ``"1.5MB"``, ``"750KiB"``, ``"48000"``.

* ``N%``: that percentage of the dense fp32 item table of the teacher (``dense_bytes``);
* ``Nx``: the dense table divided by ``N`` (a compression ratio, e.g. ``30x``);
* ``N`` with a unit: ``B``; decimal ``KB``/``MB``/``GB`` (10³, 10⁶, 10⁹); binary ``KiB``/``MiB``/``GiB``
  (2¹⁰, 2²⁰, 2³⁰). Units are case-insensitive; a space before the unit is allowed;
* a plain number: bytes.

The result is a whole number of bytes, rounded down (a budget is a ceiling). Where the dense table's size
is known, a budget above it (``"0.5x"``, ``"10MB"`` for a 20 KB table) is refused: a compressed table
larger than the one it compresses is never what was meant.
"""

from __future__ import annotations

import math
import re

UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z%]*)\s*$", re.IGNORECASE)


def parse_budget(text: str | int | float, dense_bytes: int | None = None) -> int:
    """Bytes of the budget ``text`` (see the module docstring); ``dense_bytes`` is needed for ``%`` and ``x``.

    Raises ``ValueError`` naming the text for anything unreadable, a zero or negative budget, a relative
    budget without ``dense_bytes``, or a budget above ``dense_bytes`` (a ratio below ``1x``).
    """
    if isinstance(text, bool):
        raise ValueError(f"budget must be a size such as '3%', '200KB' or 48000, got {text!r}")
    if isinstance(text, (int, float)):
        value, unit = float(text), ""
    else:
        match = _PATTERN.match(str(text))
        if not match:
            raise ValueError(f"cannot read budget {text!r}: use a percentage of the dense table ('3%'), a ratio "
                             "('30x'), a size ('200KB', '1.5MB', '750KiB') or plain bytes ('48000')")
        value, unit = float(match.group(1)), match.group(2).lower()
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"budget {text!r} must be positive")
    if unit in ("%", "x"):
        if dense_bytes is None or dense_bytes <= 0:
            raise ValueError(f"budget {text!r} is relative to the dense item table, whose size is not known here")
        if unit == "%":
            if value > 100:
                raise ValueError(f"budget {text!r} is more than 100% of the dense table")
            result = math.floor(dense_bytes * value / 100 + 1e-9)
        else:
            if value < 1:
                raise ValueError(f"budget {text!r} would be larger than the dense table ({format_bytes(dense_bytes)}): "
                                 "a ratio must be at least 1x")
            result = math.floor(dense_bytes / value + 1e-9)
    elif unit in UNITS:
        result = math.floor(value * UNITS[unit] + 1e-9)
    else:
        known = ", ".join(u.upper() for u in UNITS if u) + ", %, x"
        raise ValueError(f"budget {text!r}: unknown unit {unit!r} (known: {known})")
    if result < 1:
        raise ValueError(f"budget {text!r} is less than one byte")
    if dense_bytes is not None and result > dense_bytes:
        raise ValueError(f"budget {text!r} is more than the dense item table it compresses "
                         f"({format_bytes(dense_bytes)}); give at most that, e.g. '1x' or '{dense_bytes}'")
    return int(result)


def format_bytes(n: int) -> str:
    """``1,234,567 B (1.23 MB)`` style, for reports."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if n >= size:
            return f"{n:,} B ({n / size:.2f} {unit})"
    return f"{n:,} B"
