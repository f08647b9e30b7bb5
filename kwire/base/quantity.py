"""resource.Quantity parsing (`100m`, `1Gi`, `2.5`, `1e3`): the value as an exact Fraction, for comparisons.

Hand-written because the only maintained Python implementation is inside the whole `kubernetes` client package,
which the server does not otherwise need. Mirrors apimachinery's suffix table (binary SI, decimal SI, exponent).
"""

from __future__ import annotations

import re
from fractions import Fraction

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Fraction(1, 10**9), "u": Fraction(1, 10**6), "m": Fraction(1, 1000), "": Fraction(1)}
_DECIMAL.update({"k": Fraction(10**3), "M": Fraction(10**6), "G": Fraction(10**9), "T": Fraction(10**12)})
_DECIMAL.update({"P": Fraction(10**15), "E": Fraction(10**18)})
_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?[0-9]+|[numkMGTPE]?)$")

MSG = "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"


def parse(value: object) -> Fraction | None:
    """The quantity's value, or None when `value` is not a quantity."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(value).limit_denominator(10**9)
    if not isinstance(value, str):
        return None
    m = _QUANTITY.match(value.strip())
    if m is None:
        return None
    number, suffix = Fraction(m.group(1)), m.group(2)
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix[:1] in ("e", "E"):
        return number * Fraction(10) ** int(suffix[1:])
    return number * _DECIMAL[suffix]


def format_like(value: Fraction, example: str) -> str:
    """`value` written in the style of `example` (kube keeps a sum in its first operand's format): binary
    suffixes for a binary example, millis when not whole, else a plain or decimal-suffixed number."""
    binary = any(example.endswith(s) for s in _BINARY)
    if value.denominator != 1 or (value < 1000 and example.endswith("m")):
        milli = value * 1000
        if milli.denominator == 1:
            return f"{milli.numerator}m"
        return f"{float(value):g}"
    whole = value.numerator
    if whole == 0:
        return "0"
    if binary:
        for suffix, size in reversed(_BINARY.items()):
            if whole % size == 0:
                return f"{whole // size}{suffix}"
        return str(whole)
    for suffix in ("E", "P", "T", "G", "M", "k"):
        size = int(_DECIMAL[suffix])
        if whole % size == 0 and any(example.endswith(s) for s in ("E", "P", "T", "G", "M", "k")):
            return f"{whole // size}{suffix}"
    return str(whole)
