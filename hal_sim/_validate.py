"""Parameter checks shared by the configuration dataclasses (messages name the bad parameter)."""
from __future__ import annotations

import math


def finite(owner: str, name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{owner}.{name} must be a finite number, got {value!r}")
    return float(value)


def non_negative(owner: str, name: str, value: float) -> float:
    v = finite(owner, name, value)
    if v < 0:
        raise ValueError(f"{owner}.{name} must be >= 0, got {value!r}")
    return v


def positive(owner: str, name: str, value: float) -> float:
    v = finite(owner, name, value)
    if v <= 0:
        raise ValueError(f"{owner}.{name} must be > 0, got {value!r}")
    return v


def probability(owner: str, name: str, value: float) -> float:
    v = finite(owner, name, value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{owner}.{name} must be in [0, 1], got {value!r}")
    return v


def integer(owner: str, name: str, value: object, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            import numpy as np
            if isinstance(value, np.integer):
                value = int(value)
            else:
                raise TypeError
        except TypeError:
            raise ValueError(f"{owner}.{name} must be an integer, got {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{owner}.{name} must be >= {minimum}, got {value!r}")
    return int(value)
