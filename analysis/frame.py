"""Checks and groupings of the collected sweep frame (one row per run), shared by the claims, the figures and the widgets."""

from collections.abc import Hashable, Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.errors import ConfigError

DIVERGED_ERROR = 100.0


def check_frame(df: pd.DataFrame, columns: Iterable[str] = (), what: str = "sweep frame") -> None:
    """Raise ConfigError unless `df` is a non-empty DataFrame holding every name in `columns`."""
    if not isinstance(df, pd.DataFrame):
        raise ConfigError(f"{what} must be a pandas DataFrame, got {type(df).__name__}")
    if df.empty:
        raise ConfigError(f"empty {what}: no runs to plot")
    for column in columns:
        if column not in df.columns:
            have = ", ".join(map(str, df.columns)) or "none"
            raise ConfigError(f"missing column {column!r} in {what}; columns: {have}")


def as_columns(by: str | Sequence[str], what: str = "by") -> list[str]:
    """Return `by` (one column name or several) as a non-empty list of names."""
    columns = [by] if isinstance(by, str) else list(by)
    if not columns or not all(isinstance(c, str) for c in columns):
        raise ConfigError(f"{what} must be a column name or a list of column names, got {by!r}")
    return columns


def diverged_mask(df: pd.DataFrame) -> pd.Series:
    """Return a bool Series: the run diverged (column `diverged`, or status "diverged")."""
    mask = pd.Series(False, index=df.index)
    if "diverged" in df.columns:
        mask |= df["diverged"].astype("boolean").fillna(False).astype(bool)
    if "status" in df.columns:
        mask |= df["status"].astype("string").eq("diverged").fillna(False).astype(bool)
    return mask


def counted_errors(df: pd.DataFrame, column: str = "error") -> pd.Series:
    """Return the errors of runs that count: finished runs as is, diverged runs at 100.

    Runs without an error (failed, running, pending) are dropped; the index is kept.
    """
    check_frame(df, [column])
    err = pd.to_numeric(df[column], errors="coerce").astype(float)
    div = diverged_mask(df)
    err = err.where(~div, DIVERGED_ERROR)
    return err[err.notna()]


def group_key(key: Hashable, n_columns: int) -> Hashable:
    """Return a groupby key as a scalar for one column and a tuple for several."""
    if n_columns == 1 and isinstance(key, tuple):
        return key[0]
    return key


def groups(df: pd.DataFrame, by: Sequence[str]) -> list[tuple[Hashable, pd.DataFrame]]:
    """Return [(key, rows)] for each group of `by`, sorted by key (missing values kept)."""
    columns = as_columns(by)
    check_frame(df, columns)
    return [(group_key(k, len(columns)), g) for k, g in df.groupby(columns, sort=True, dropna=False)]


def group_keys(df: pd.DataFrame, by: Sequence[str]) -> list[Hashable]:
    """Return the sorted group keys of `by` in `df`."""
    return [k for k, _ in groups(df, by)]


def positive_range(values: pd.Series) -> tuple[float, float] | None:
    """Return (min, max) of the finite positive values, or None when there are none."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return None
    return float(v.min()), float(v.max())
