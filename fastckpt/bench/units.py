"""Sizes as people write them (``512MiB``, ``1GiB``)."""

from __future__ import annotations

__all__ = ["parse_size"]

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "KB": 10**3, "KIB": 1 << 10, "M": 1 << 20, "MB": 10**6,
          "MIB": 1 << 20, "G": 1 << 30, "GB": 10**9, "GIB": 1 << 30}


def parse_size(text: str) -> int:
    """``"1GiB"`` → 1073741824; plain numbers are bytes."""
    t = text.strip().upper().replace(" ", "")
    num = t.rstrip("KMGIB")
    unit = t[len(num):]
    try:
        if unit not in _UNITS or not num:
            raise ValueError
        return int(float(num) * _UNITS[unit])
    except ValueError:
        raise ValueError(f"cannot parse size {text!r} (try 512MiB, 1GiB)") from None
