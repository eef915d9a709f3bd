"""How many (lr, wd) pairs a study needs: the power of its primary claim, by simulation.

The primary claim of the powered study (jobs/fmnist_power.yaml) is the paper's optimizer finding as
two rows of the claims table, read together:
  optimizer_gap_best_difference > 0   (ViT_P's best-of-25% SGD - AdamW gap exceeds ViT_C's), and
  ViT_C's optimizer_gap_best within +-margin   (ViT_C's SGD within about a point of AdamW).

    from analysis.power import pilot_errors, power, pairs_needed
    pilot = pilot_errors(collect("sweeps/fmnist_regimes"), setting)   # {(stem, optimizer): errors}
    power(pilot, n=24)        # {"difference": 0.83, "equivalence": 0.97, "primary": 0.81}
    pairs_needed(pilot)       # the least n of `candidates` with 80% power for the difference

The simulation (this suite's choice, stated before any powered run): each group's measured errors
are its population. One simulated study draws n errors with replacement from each of the four
groups, then applies the claims code's own bootstrap to them (each group resampled n of n,
`resamples` times, the best-of-`subsample` statistic of analysis.claims.best_of, the 95% percentile
interval and the verdict rules of analysis.claims). The truth is set by shifting whole groups, which
moves every best-of statistic by the same amount: ViT_C's SGD group so that ViT_C's expected gap is
0, ViT_P's SGD group so that the expected difference of the two gaps is `delta` (3 points: the
smallest difference the study is sized to resolve). Power is the fraction of simulated studies whose
row is "reproduced"; "primary" needs both rows at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.claims import MARGIN, _frame, best_of, interval, setting_of, verdict_of
from analysis.errors import ConfigError
from analysis.names import preset_size
from analysis.frame import counted_errors

GROUPS = (("ViT_P", "adamw"), ("ViT_P", "sgd"), ("ViT_C", "adamw"), ("ViT_C", "sgd"))
CANDIDATES = (16, 24, 32, 48, 64, 96, 128)  # the n the powered study's plan was computed on


def pilot_errors(df: pd.DataFrame, setting: str) -> dict[tuple[str, str], np.ndarray]:
    """{(stem name, optimizer): counted errors} of one claims-table setting of a collected sweep
    (diverged runs at 100%, failed and unfinished left out, as the claims table counts them)."""
    named = setting_of(df)
    rows = _frame(df[named.eq(setting)])
    out = {}
    for stem, opt in GROUPS:
        g = rows[rows["stem_name"].eq(stem) & rows["optimizer"].eq(opt)]
        out[stem, opt] = counted_errors(g).to_numpy(dtype=float)
    short = [f"{s} {o}" for (s, o), e in out.items() if len(e) < 3]
    if short:
        raise ConfigError(f"setting {setting!r}: fewer than 3 counted runs in {', '.join(short)}")
    return out


def _draws(pilot: dict, n: int, sims: int, resamples: int, subsample: float, rng) -> dict:
    """Per group: (sims,) best-of estimates of simulated studies and (sims, resamples) bootstrap
    values, drawn a few studies at a time so memory stays at a few MB whatever n is."""
    out = {}
    for key in GROUPS:
        pop = np.asarray(pilot[key], dtype=float)
        study = pop[rng.integers(0, len(pop), size=(sims, n))]  # (sims, n)
        boot = np.empty((sims, resamples))
        for i in range(0, sims, 8):
            s = study[i : i + 8]
            idx = rng.integers(0, n, size=(len(s), resamples, n))
            draws = np.take_along_axis(s[:, None, :], idx, axis=2)
            boot[i : i + 8] = best_of(draws.reshape(-1, n), subsample).reshape(len(s), resamples)
        out[key] = (best_of(study, subsample), boot)
    return out


def power(
    pilot: dict[tuple[str, str], np.ndarray],
    n: int,
    delta: float = 3.0,
    margin: float = MARGIN,
    sims: int = 300,
    resamples: int = 1000,
    subsample: float = 0.25,
    seed: int = 0,
) -> dict[str, float]:
    """The power of the primary claim's two rows at n runs per group (see the module): fractions of
    `sims` simulated studies whose difference row, ViT_C equivalence row, and both, are reproduced."""
    missing = [k for k in GROUPS if k not in pilot or len(pilot[k]) == 0]
    if missing:
        raise ConfigError(f"pilot errors missing for {missing[0]}; give all of {list(GROUPS)}")
    if n < 2 or sims < 10 or resamples < 100:
        raise ConfigError(f"power needs n >= 2, sims >= 10, resamples >= 100; got {n}, {sims}, {resamples}")
    rng = np.random.default_rng([seed, n])
    d = _draws(pilot, n, sims, resamples, subsample, rng)
    gap = {s: (d[s, "sgd"][0] - d[s, "adamw"][0], d[s, "sgd"][1] - d[s, "adamw"][1]) for s in ("ViT_P", "ViT_C")}
    shift_c = -gap["ViT_C"][0].mean()  # ViT_C's expected gap -> 0
    shift_p = delta - gap["ViT_P"][0].mean()  # ViT_P's expected gap -> delta (so the difference is delta)
    c_boot = gap["ViT_C"][1] + shift_c
    diff_boot = (gap["ViT_P"][1] + shift_p) - c_boot
    diff_ok = np.array([verdict_of(*interval(b)) == "reproduced" for b in diff_boot])
    equiv_ok = np.array([verdict_of(*interval(b), margin) == "reproduced" for b in c_boot])
    return {
        "difference": float(diff_ok.mean()),
        "equivalence": float(equiv_ok.mean()),
        "primary": float((diff_ok & equiv_ok).mean()),
    }


def power_curve(pilot: dict, candidates=CANDIDATES, **kwargs) -> pd.DataFrame:
    """power() at each n of `candidates`: columns n, difference, equivalence, primary."""
    return pd.DataFrame([{"n": n, **power(pilot, n, **kwargs)} for n in candidates])


def pairs_needed(
    pilot: dict, target: float = 0.8, row: str = "difference", candidates=CANDIDATES, **kwargs
) -> int | None:
    """The least n of `candidates` at which `row` ("difference", "equivalence" or "primary") has at
    least `target` power; None when none of them reaches it."""
    if row not in ("difference", "equivalence", "primary"):
        raise ConfigError(f"unknown power row {row!r}; allowed: difference, equivalence, primary")
    for n in sorted(candidates):
        if power(pilot, n, **kwargs)[row] >= target:
            return n
    return None


def study_plan(
    df: pd.DataFrame, settings: list[str] | None = None, target: float = 0.8, candidates=CANDIDATES, **kwargs
) -> pd.DataFrame:
    """Per claims-table setting of a pilot sweep (default every ViT_P / ViT_C setting it holds): the
    pilot's runs per group, the spread (standard deviation) of each group's errors, the power of the
    primary claim's rows at 24 pairs, and the least pairs per model x optimizer of `candidates` that
    give the difference row, and both rows together, `target` power (None: none of them)."""
    named = setting_of(df).dropna()
    rows = []
    for setting in settings or sorted(named.unique()):
        pilot = pilot_errors(df, setting)
        curve = power_curve(pilot, sorted(set(candidates) | {24}), **kwargs).set_index("n")  # each n once

        def least(row: str) -> int | None:
            return next((n for n in sorted(candidates) if curve.loc[n, row] >= target), None)

        rows.append(
            {
                "setting": setting,
                "pilot_runs": min(len(e) for e in pilot.values()),
                **{f"sd {s} {o}": float(np.std(pilot[s, o], ddof=1)) for s, o in GROUPS},
                "power_at_24": curve.loc[24, "difference"],
                "primary_at_24": curve.loc[24, "primary"],
                "pairs_difference": least("difference"),
                "pairs_primary": least("primary"),
            }
        )
    return pd.DataFrame(rows)


# The powered study's plan (jobs/fmnist_power.yaml): pairs per model x optimizer analysed in each regime,
# (preset size, epochs) -> n, from the power calculation on the n=6 study's groups.
STUDY_PLAN = {("fmnist_tiny", 15): 24, ("fmnist_tiny", 10): 48, ("fmnist_p16_tiny", 15): 48, ("fmnist_tiny", 20): 24}


def planned_runs(run_ids: list[str], configs: dict, plan: dict | None = None) -> list[str]:
    """The runs a study's plan analyses, in run order: in each cell of model x schedule x optimizer, the
    first n runs in sample order, n = plan[(preset size, epochs)] (0 for a regime the plan leaves out).
    A spec's runs come cell by cell, each cell's samples in the order they were drawn."""
    plan = STUDY_PLAN if plan is None else plan
    seen: dict[tuple, int] = {}
    out = []
    for run in run_ids:
        cfg = configs[run]
        cell = (cfg.model.preset, cfg.train.epochs, cfg.optim.name)
        seen[cell] = seen.get(cell, 0) + 1
        if seen[cell] <= plan.get((preset_size(cfg.model.preset), cfg.train.epochs), 0):
            out.append(run)
    return out


def primary_table(table: pd.DataFrame, df: pd.DataFrame | None = None) -> pd.DataFrame:
    """The primary claim per setting of a claims table: the optimizer_gap_best_difference row and ViT_C's
    optimizer_gap_best row (estimate, interval, verdict), `primary` (both reproduced) and, given the
    sweep frame `df`, the median seconds per run; sorted by the selection rule of jobs/fmnist_power.yaml
    (primary first, then the cheapest runs, ties to the paper's geometry p16)."""
    rows = []
    for setting, t in table.groupby("setting", sort=True):
        diff = t[t["claim"].eq("optimizer_gap_best_difference")]
        gap = t[t["claim"].eq("optimizer_gap_best") & t["subject"].str.startswith("ViT_C-")]
        if diff.empty or gap.empty:
            continue
        d, c = diff.iloc[0], gap.iloc[0]
        rows.append(
            {
                "setting": setting,
                "difference": d["estimate"],
                "difference_interval": (d["low"], d["high"]),
                "difference_verdict": d["verdict"],
                "vit_c_gap": c["estimate"],
                "vit_c_gap_interval": (c["low"], c["high"]),
                "vit_c_gap_verdict": c["verdict"],
                "primary": d["verdict"] == "reproduced" and c["verdict"] == "reproduced",
            }
        )
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["seconds_per_run"] = np.nan
    if df is not None and "seconds" in df:
        named = setting_of(df)
        for i, setting in enumerate(out["setting"]):
            out.loc[i, "seconds_per_run"] = float(df.loc[named.eq(setting), "seconds"].median())
    p16 = out["setting"].str.contains("_p16").astype(int)
    order = out.assign(_p16=p16).sort_values(["primary", "seconds_per_run", "_p16"], ascending=[False, True, False])
    return order.drop(columns="_p16").reset_index(drop=True)


def choose_main_regime(primary: pd.DataFrame) -> str | None:
    """The selection rule of jobs/fmnist_power.yaml: among the settings where the primary claim is
    reproduced, the one with the cheapest runs (ties to p16); None when it holds in none."""
    hits = primary[primary["primary"]] if len(primary) else primary
    return None if hits.empty else str(hits["setting"].iloc[0])
