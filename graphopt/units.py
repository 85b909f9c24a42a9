"""Byte sizes as people write them: one parser for every option that takes a size.

| written          | bytes                                   |
| ``4096``         | 4096 (a plain integer is bytes)         |
| ``512B``         | 512                                     |
| ``2KB`` ``2MB`` ``2GB`` ``2TB`` | 2·10³, 2·10⁶, 2·10⁹, 2·10¹² (powers of 10) |
| ``2KiB`` ``2MiB`` ``2GiB`` ``2TiB`` | 2·2¹⁰, 2·2²⁰, 2·2³⁰, 2·2⁴⁰ (powers of 2) |
| ``1.5GiB``       | 1610612736 (a decimal needs a unit; rounded down to a whole byte) |

Units are case-insensitive (``2gib`` = ``2GiB``), a space may separate number and unit, and
``_`` may group digits (``1_000_000``). A bare decimal such as ``1.5`` is refused rather than
guessed at, and so is a bare ``K``/``M``/``G``/``T``: ``512M`` could mean either family.

:func:`parse_budget` adds the one other form a memory budget takes: a fraction in (0, 1], told
apart from bytes by its decimal point and the absence of a unit (``0.5``, ``1.0``).
"""
from __future__ import annotations

import re
from fractions import Fraction

from graphopt.errors import SizeError

__all__ = ["parse_bytes", "format_bytes", "parse_budget", "SIZE_FORMS", "UNITS"]

UNITS: dict[str, int] = {
    "b": 1,
    "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_CANONICAL = {"b": "B", "kb": "KB", "mb": "MB", "gb": "GB", "tb": "TB",
              "kib": "KiB", "mib": "MiB", "gib": "GiB", "tib": "TiB"}
SIZE_FORMS = ("an integer number of bytes, or a number with a unit: KB/MB/GB/TB (powers of 10) "
              "or KiB/MiB/GiB/TiB (powers of 2), e.g. 268435456, 256MiB or 1.5GB")

_NUMBER = r"(?P<num>[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)"
_SIZE = re.compile(_NUMBER + r"\s*(?P<unit>[a-z]*)")
# Largest first so format_bytes prefers 1.5GiB to 1536MiB; each family interleaved by size.
_BY_SIZE = sorted(((f, _CANONICAL[u]) for u, f in UNITS.items() if f > 1), reverse=True)


def _prefix(option: str | None) -> str:
    return f"{option} " if option else ""


def parse_bytes(text, *, option: str | None = None) -> int:
    """A byte count from ``text`` (see the module table); ``option`` names the flag in errors.

    Raises:
        SizeError: one line naming ``option``, the text, and the accepted forms.

    Example:
        >>> parse_bytes("2GB"), parse_bytes("2GiB"), parse_bytes("1.5KiB"), parse_bytes("4096")
        (2000000000, 2147483648, 1536, 4096)
    """
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise SizeError(f"{_prefix(option)}{text}: a size cannot be negative")
        return text
    if not isinstance(text, str):
        raise SizeError(f"{_prefix(option)}{text!r}: cannot read it as bytes; give {SIZE_FORMS}")
    raw = text
    t = text.strip().lower()
    m = _SIZE.fullmatch(t)
    if t.startswith("-"):
        raise SizeError(f"{_prefix(option)}{raw}: a size cannot be negative")
    if not m:
        raise SizeError(f"{_prefix(option)}{raw!r}: cannot read it as bytes; give {SIZE_FORMS}")
    num, unit = m.group("num").replace("_", ""), m.group("unit")
    if unit and unit not in UNITS:
        if unit in ("k", "m", "g", "t"):
            upper = unit.upper()
            raise SizeError(f"{_prefix(option)}{raw}: '{upper}' is ambiguous; write "
                            f"{upper}B (powers of 10) or {upper}iB (powers of 2)")
        raise SizeError(f"{_prefix(option)}{raw}: unknown unit {m.group('unit')!r}; give "
                        f"{SIZE_FORMS}")
    if not unit and "." in num:
        raise SizeError(f"{_prefix(option)}{raw}: a decimal needs a unit (bytes are whole); "
                        f"give {SIZE_FORMS}")
    # Fraction, not float: 1.1GiB must not pick up binary rounding error on its way to bytes.
    return int(Fraction(num) * UNITS[unit or "b"])


def format_bytes(n: int) -> str:
    """The exact, readable form of ``n`` bytes that :func:`parse_bytes` reads back as ``n``.

    The largest unit giving at most two decimals, else the plain integer. Example:
        >>> format_bytes(2**30), format_bytes(1536), format_bytes(2 * 10**9), format_bytes(1001)
        ('1GiB', '1.5KiB', '2GB', '1001')
    """
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"format_bytes takes an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"format_bytes takes a non-negative size, got {n}")
    for factor, unit in _BY_SIZE:
        if n < factor:
            continue
        hundredths = Fraction(n * 100, factor)
        if hundredths.denominator == 1:
            whole, cents = divmod(int(hundredths), 100)
            digits = "" if cents == 0 else f".{cents:02d}".rstrip("0")
            return f"{whole}{digits}{unit}"
    return str(n)


def parse_budget(text, *, option: str = "--budget") -> float | int:
    """A memory budget: a fraction in (0, 1] or a positive byte size.

    A value without a unit that contains a ``.`` is a fraction (``0.5``, ``1.0``); anything else
    is read by :func:`parse_bytes` (``1`` is one byte, ``1.5`` an error: neither a fraction in
    range nor whole bytes). Example:
        >>> parse_budget("0.5"), parse_budget("512MiB"), parse_budget("4096")
        (0.5, 536870912, 4096)
    """
    if isinstance(text, float):
        text = repr(text)
    if isinstance(text, str):
        t = text.strip().lower().replace("_", "")
        if re.fullmatch(r"[0-9]*\.[0-9]*", t) and t != ".":
            value = float(t)
            if 0.0 < value <= 1.0:
                return value
            raise SizeError(f"{option} {text}: a fraction must lie in (0, 1]; give bytes as an "
                            "integer or with a unit (e.g. 512MiB or 2GB)")
        if not _SIZE.fullmatch(t) and not t.startswith("-"):  # not number-shaped: both forms
            raise SizeError(f"{option} {text!r} is neither a fraction in (0, 1] nor a size; "
                            f"give 0.5 or {SIZE_FORMS}")
    nbytes = parse_bytes(text, option=option)
    if nbytes <= 0:
        raise SizeError(f"{option} {text}: a budget in bytes must be positive")
    return nbytes
