"""Input checks shared by the strategy modules: one clear ValueError instead of a silent NaN ranking."""
from __future__ import annotations

import numpy as np


def finite_array(x, name: str, ndim: int | None = None, dtype=np.float64) -> np.ndarray:
    """`x` as a numpy array; raises ValueError when it has NaN/inf or the wrong number of axes."""
    a = np.asarray(x, dtype=dtype)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} axes, got shape {a.shape}")
    if a.size and not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        raise ValueError(f"{name} contains {bad} NaN/inf value(s); fix the scores before ranking them")
    return a
