"""Regimes of a regime study: the claims table per setting, each setting's cost, and the main job's
selection rule as code (jobs/fmnist_regimes.yaml states it in words).

A regime is a claims-table setting: the preset pair's size (which carries the stem geometry, e.g.
fmnist_p16_tiny), the data columns that vary in the sweep (e.g. data.train_per_class=200) and the
schedule length. `claims.setting_of` names each run's setting as the claims table does.

    from analysis.regimes import regime_summary, choose_regime
    table = claims_table(df); summary = regime_summary(df, table)
    best = choose_regime(summary)            # the rule's pick among regimes within the budget
"""

from __future__ import annotations

import re

import pandas as pd

from analysis.claims import setting_of
from analysis.errors import ConfigError

# The stability claims the selection rule counts: (claim, subject kind, optimizer or "" for both).
STABILITY_CLAIMS = [
    ("optimizer_gap_difference", "ViT_P vs ViT_C"),
    ("optimizer_gap_best_difference", "ViT_P vs ViT_C"),
    ("within_k_difference", "ViT_P vs ViT_C"),
    ("edf_area", "ViT_P vs ViT_C"),
    ("optimizer_gap", "ViT_C"),
]
BUDGET_GFLOP = 12_000 * 4.0e-3  # 12,000 images x 4.0 MFLOPs: the main job's work per run, in GFLOPs
GEOMETRY_ORDER = ("p16", "p8")  # ties: the paper's geometry first


def stability_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a claims table that the selection rule counts (see STABILITY_CLAIMS)."""
    keep = pd.Series(False, index=table.index)
    for claim, subject in STABILITY_CLAIMS:
        match = table["subject"].eq(subject) if subject != "ViT_C" else table["subject"].str.startswith("ViT_C-")
        keep |= table["claim"].eq(claim) & match
    return table[keep]


def geometry(setting: str) -> str:
    """The stem geometry a setting's preset size names: "p16", "p8", or "p4" (the plain small presets)."""
    m = re.search(r"_p(\d+)", setting.split(",")[0])
    return f"p{m.group(1)}" if m else "p4"


def regime_summary(df: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """One row per setting (regime): runs, CPU minutes (the sum of the runs' training seconds),
    seconds per run, work per run (training images seen x forward GFLOPs of the costlier model),
    whether that work fits the main job's budget, and the counts of stability claims reproduced,
    contradicted and inconclusive. Sorted by the selection rule's order (see choose_regime)."""
    for c in ("seconds", "flops", "cfg.train.epochs", "cfg.data.train_per_class"):
        if c not in df.columns:
            raise ConfigError(f"missing column {c!r} in the sweep frame (collect() gives it)")
    df = df.assign(setting=setting_of(df)).dropna(subset=["setting"])
    per_class = pd.to_numeric(df["cfg.data.train_per_class"], errors="coerce").fillna(6000)
    images = per_class * 10 * pd.to_numeric(df["cfg.train.epochs"], errors="coerce")
    df = df.assign(work=images * pd.to_numeric(df["flops"], errors="coerce") / 1e9)
    stab = stability_rows(table)
    rows = []
    for setting, g in df.groupby("setting", sort=True):
        verdicts = stab.loc[stab["setting"].eq(setting), "verdict"]
        work = float(g["work"].max())
        rows.append(
            {
                "setting": setting,
                "geometry": geometry(setting),
                "runs": len(g),
                "cpu_minutes": float(g["seconds"].sum()) / 60,
                "seconds_per_run": float(g["seconds"].mean()),
                "work_gflop": work,
                "fits_budget": work <= BUDGET_GFLOP * 1.001,
                "epochs": int(g["cfg.train.epochs"].iloc[0]),
                "reproduced": int(verdicts.eq("reproduced").sum()),
                "contradicted": int(verdicts.eq("contradicted").sum()),
                "inconclusive": int(verdicts.eq("inconclusive").sum()),
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    rank = out["geometry"].map(lambda g: GEOMETRY_ORDER.index(g) if g in GEOMETRY_ORDER else len(GEOMETRY_ORDER))
    order = out.assign(_rank=rank).sort_values(["reproduced", "_rank", "epochs"], ascending=[False, True, False])
    return order.drop(columns="_rank").reset_index(drop=True)


def choose_regime(summary: pd.DataFrame, within_budget: bool = True) -> str | None:
    """The selection rule: among regimes within the budget (or those over it, within_budget=False),
    the most stability claims reproduced; ties to p16, then p8, then to more passes over the data.
    Returns the setting, or None when no regime qualifies."""
    pool = summary[summary["fits_budget"] == within_budget] if len(summary) else summary
    return None if pool.empty else str(pool["setting"].iloc[0])
