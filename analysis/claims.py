"""The paper's claims as statistics of a collected sweep, each with a 95% bootstrap interval and a verdict.

    from analysis.claims import claims_table, claims_text
    table = claims_table(collect("sweeps/fmnist_demo"))
    print(claims_text(table))            # or: python -m analysis claims sweeps/fmnist_demo

Runs: the errors that count are those of `analysis.frame.counted_errors` (diverged runs at
100%); failed and unfinished runs are left out and counted in `excluded`. Only the paper's two
stems are compared (ViT_P: patchify, ViT_C: conv); other stems and CNNs are left out.

Groups and pairing: a group is the runs of one model x optimizer in one setting, and a setting is
everything the two stems must share: the preset's size (vit_p_4gf and vit_c_4gf share "4GF"),
the schedule length (epochs) and the data (cfg.data.name, train_per_class, test_per_class,
augment) and cfg.model.local_mlp. The runs within a group differ in their sampled lr, wd or seed.

Statistics (each signed so that the paper's finding is positive):
  optimizer_gap        per stem: median SGD error minus median AdamW error (points)
  optimizer_gap_best   per stem: the same gap of the best-of-subsample error (see `best_of`)
  optimizer_gap[_best]_difference   ViT_P's gap minus ViT_C's
  within_k             per stem and optimizer: fraction of runs within `within` points of the
                       group's best (a level; the _difference row carries the verdict)
  within_k_difference  ViT_C's fraction minus ViT_P's
  edf_area             per optimizer: the area between the two stems' EDFs of error above their
                       group's best over [0, area_range] points, divided by area_range: the mean
                       height of ViT_C's EDF above ViT_P's (+1: every ViT_C run at its best while
                       every ViT_P run is area_range or more above its best)
  peak                 per stem and optimizer: best-of-subsample error (a level)
  peak_difference      ViT_P's best-of-subsample error minus ViT_C's
  schedule_loss        when the setting has several schedule lengths, per stem and optimizer:
                       median error at the shortest minus at the longest schedule
  schedule_loss_difference   ViT_P's loss minus ViT_C's

Bootstrap (this suite's choice): `resamples` times, the runs of every group are resampled with
replacement (n of n), each group from its own generator seeded by (seed, group), so that every
statistic involving a group sees the same resamples; the interval is the 2.5 and 97.5 percentiles
of the statistic over the resamples and the estimate is the statistic of the runs themselves.
Verdicts, by the test the paper's sentence calls for (column `test`):
  difference claims (one-sided, "> 0"): "reproduced" when the interval lies above 0 (the paper's
    direction), "contradicted" when it lies below, else "inconclusive";
  insensitivity claims (equivalence, "within +-m"): ViT_C's optimizer gaps ("SGD within about a point
    of AdamW") and ViT_C's schedule loss. Two one-sided tests read off the interval: "reproduced" when
    the whole interval lies inside (-m, m) for the margin m (`margin`, stated before any run: 2 points
    by default, the paper's "about a point" plus about a point of the seed-to-seed spread of these
    small runs), "contradicted" when it lies wholly outside, else "inconclusive". A gap of the other
    sign inside the margin (ViT_C a little better with SGD) supports the claim.
  level rows (a stem's own within_k or peak) have verdict "".
Diverged runs count at 100% (the paper's convention); every row says how many of its runs diverged
(`diverged`) and the verdict the same runs give without them (`verdict_without_diverged`); when the
two differ, `note` says the verdict rests on the diverged runs.
A group with fewer than MIN_RUNS (8) counted runs still gives its rows, with the estimate but no
interval, marked "insufficient" (levels: "") and the reason in `note`: below 8 runs the bootstrap's
resamples repeat a handful of values and its interval is too narrow to trust (this suite's choice).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.errors import ConfigError, one_of
from analysis.html import html_table
from analysis.names import STEM_NAMES, preset_size
from analysis.frame import check_frame, counted_errors, diverged_mask
from analysis.stats import best_of_quantiles

MIN_RUNS = 8  # counted runs a group needs for an interval and a verdict (see the module docstring)
PAIR_COLUMNS = (
    "cfg.data.name",
    "cfg.data.train_per_class",
    "cfg.data.test_per_class",
    "cfg.data.augment",
    "cfg.model.local_mlp",
)
COLUMNS = [
    "claim",
    "subject",
    "optimizer",
    "setting",
    "statistic",
    "estimate",
    "low",
    "high",
    "test",
    "verdict",
    "paper",
    "n",
    "excluded",
    "diverged",
    "verdict_without_diverged",
    "note",
]
MARGIN = 2.0  # points: the equivalence margin of the insensitivity claims (see the module docstring)
VERDICTS = ("reproduced", "contradicted", "inconclusive", "insufficient")
PAPER = {  # what Xiao et al. found (ImageNet), one short phrase per claim
    "optimizer_gap": {"ViT_P": "SGD worse, by up to 10 points", "ViT_C": "SGD within about a point of AdamW"},
    "optimizer_gap_difference": "ViT_P's gap far larger than ViT_C's",
    "within_k": "higher for ViT_C",
    "within_k_difference": "ViT_C higher (about 60% vs under 20%, 18GF SGD)",
    "edf_area": "ViT_C's EDF above ViT_P's",
    "peak": "lower for ViT_C",
    "peak_difference": "ViT_C better by 0.9-3 points (400 epochs)",
    "schedule_loss": {"ViT_P": "loses on shorter schedules", "ViT_C": "loses little on shorter schedules"},
    "schedule_loss_difference": "ViT_P loses more",
}


@dataclass
class Group:
    """The runs of one model x optimizer in one setting: counted errors and their resamples."""

    model: str  # display name, e.g. "ViT_C-fmnist_tiny"
    optimizer: str
    errors: np.ndarray  # (n,) counted errors
    boot: np.ndarray  # (resamples, n) errors resampled with replacement
    total: int  # rows of the frame in the group, failed and unfinished included
    diverged: int = 0  # counted runs that diverged (at 100%)

    @property
    def small(self) -> bool:
        return len(self.errors) < MIN_RUNS

    @property
    def label(self) -> str:
        return f"{self.model} {self.optimizer}"


# ---------------------------------------------------------------- statistics of one group
# Each takes errors as (R, n) and returns (R,): one value per resample (R = 1 for the runs themselves).


def best_of(x: np.ndarray, subsample: float) -> np.ndarray:
    """pycls' bootstrap best, exactly: the median of the best of m = max(1, round(subsample*n)) runs
    drawn with replacement (see analysis.stats.best_of_quantiles)."""
    return best_of_quantiles(x, subsample, (0.5,))[..., 0]


def within_fraction(x: np.ndarray, k: float) -> np.ndarray:
    """Fraction of the runs within k points of the best of the same runs."""
    return (x <= x.min(axis=1, keepdims=True) + k).mean(axis=1)


def capped_excess(x: np.ndarray, cap: float) -> np.ndarray:
    """Mean of min(error - best, cap): the area above the relative EDF over [0, cap]."""
    return np.minimum(x - x.min(axis=1, keepdims=True), cap).mean(axis=1)


def median(x: np.ndarray) -> np.ndarray:
    return np.median(x, axis=1)


# ---------------------------------------------------------------- groups and settings


def _frame(df: pd.DataFrame) -> pd.DataFrame:
    """The ViT_P / ViT_C rows with the columns that group and pair them: size, data (the data
    columns that vary in the frame, as text; "" when none do), key (size and data) and stem_name."""
    check_frame(df, ["model", "preset", "stem", "optimizer", "epochs", "error"])
    df = df[df["stem"].isin(list(STEM_NAMES))].copy()
    df["size"] = df["preset"].map(preset_size)
    df["stem_name"] = df["stem"].map(STEM_NAMES)
    df["data"] = ""
    for c in PAIR_COLUMNS:
        if c in df.columns and df[c].astype(str).nunique() > 1:
            df["data"] += f", {c.removeprefix('cfg.')}=" + df[c].astype(str)
    df["key"] = df["size"] + df["data"]
    return df


def setting_of(df: pd.DataFrame) -> pd.Series:
    """The claims-table setting of each ViT_P / ViT_C row of a sweep frame ("<size>[, data], N epochs");
    other rows get None."""
    f = _frame(df)
    named = f["key"] + ", " + pd.to_numeric(f["epochs"]).map(lambda e: f"{e:g}") + " epochs"
    return named.reindex(df.index)


def group_name(values) -> str:
    """The text a group's generator is seeded by: its key values joined by "|"."""
    return "|".join(str(v) for v in values)


def make_group(rows: pd.DataFrame, name: str, resamples: int = 2000, seed: int = 0) -> Group:
    """The Group of `rows` (one model x optimizer): counted errors and `resamples` resamples of them
    with replacement, drawn from a generator seeded by (seed, name): a group's resamples depend on
    its name alone, so every table and figure that names it alike draws the same ones."""
    counted = counted_errors(rows)
    err = counted.to_numpy(dtype=float)
    diverged = int(diverged_mask(rows).loc[counted.index].sum())
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    boot = err[rng.integers(0, len(err), size=(resamples, len(err)))] if len(err) else np.empty((resamples, 0))
    model = str(rows["model"].iloc[0]) if "model" in rows else name
    return Group(model, str(rows["optimizer"].iloc[0]), err, boot, len(rows), diverged)


def _groups(df: pd.DataFrame, resamples: int, seed: int) -> dict:
    """{(key, epochs, stem name, optimizer): Group}, each named (model, optimizer, epochs[, data])."""
    out = {}
    for (key, epochs, stem, opt), g in df.groupby(["key", "epochs", "stem_name", "optimizer"], sort=True):
        data = g["data"].iloc[0]
        name = group_name([g["model"].iloc[0], opt, epochs] + ([data] if data else []))
        out[(key, epochs, stem, opt)] = make_group(g, name, resamples, seed)
    return out


def group_stat(stat: str, subsample: float = 0.25):
    """The function (R, n) -> (R,) of a named statistic of a group's errors: "best" (lowest),
    "median", "mean" or "best_of" (pycls' bootstrap best of a `subsample` fraction, see best_of)."""
    stats = {
        "best": lambda x: x.min(axis=1),
        "median": median,
        "mean": lambda x: x.mean(axis=1),
        "best_of": lambda x: best_of(x, subsample),
    }
    if stat not in stats:
        raise one_of("stat", stat, stats)
    return stats[stat]


def interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval (2.5 and 97.5 percentiles) of bootstrap values."""
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)


# ---------------------------------------------------------------- rows


def verdict_of(low: float, high: float, margin: float | None = None) -> str:
    """One-sided (margin None): above 0 reproduces, below 0 contradicts. Equivalence: inside
    (-margin, margin) reproduces, wholly outside it contradicts. Anything else is inconclusive."""
    if margin is None:
        return "reproduced" if low > 0 else "contradicted" if high < 0 else "inconclusive"
    if -margin < low and high < margin:
        return "reproduced"
    if low >= margin or high <= -margin:
        return "contradicted"
    return "inconclusive"


def _row(
    claim: str,
    subject: str,
    optimizer: str,
    setting: str,
    statistic: str,
    paper: str,
    parts: list[tuple[Group, callable]],
    combine=None,
    level: bool = False,
    margin: float | None = None,
) -> dict:
    """One table row: `combine` of the per-group statistics `parts` [(group, stat)], at the runs
    themselves (estimate) and over the resamples (interval); an equivalence test when `margin` is set."""
    combine = combine or (lambda *v: v[0])
    groups = [g for g, _ in parts]
    small = [g.label for g in groups if g.small]
    empty = any(len(g.errors) == 0 for g in groups)
    estimate = math.nan if empty else float(combine(*[f(g.errors[None, :])[0] for g, f in parts]))
    low = high = math.nan
    if not small:
        low, high = interval(combine(*[f(g.boot) for g, f in parts]))
    verdict = "" if level else "insufficient" if small else verdict_of(low, high, margin)
    counted = sum(len(g.errors) for g in groups)
    test = "" if level else "> 0" if margin is None else f"within ±{margin:g}"
    return {
        "claim": claim,
        "subject": subject,
        "optimizer": optimizer,
        "setting": setting,
        "statistic": statistic,
        "estimate": estimate,
        "low": low,
        "high": high,
        "test": test,
        "verdict": verdict,
        "paper": paper,
        "n": f"{counted}/{sum(g.total for g in groups)}",
        "excluded": sum(g.total for g in groups) - counted,
        "diverged": sum(g.diverged for g in groups),
        "verdict_without_diverged": "",
        "note": f"fewer than {MIN_RUNS} runs in {', '.join(small)}" if small else "",
    }


def _gap_rows(G: dict, key: str, epochs, subsample: float, margin: float) -> list[dict]:
    """optimizer_gap and optimizer_gap_best per stem, and their differences, for one setting."""
    setting = f"{key}, {epochs:g} epochs"
    have = [s for s in STEM_NAMES.values() if (key, epochs, s, "sgd") in G and (key, epochs, s, "adamw") in G]
    best = group_stat("best_of", subsample)
    rows = []
    for claim, words, f in (
        ("optimizer_gap", "median", median),
        ("optimizer_gap_best", f"best-of-{subsample:.0%}", best),
    ):
        for s in have:
            sgd, adamw = G[key, epochs, s, "sgd"], G[key, epochs, s, "adamw"]
            rows.append(
                _row(
                    claim,
                    sgd.model,
                    "",
                    setting,
                    f"{words} SGD - AdamW error (points)",
                    PAPER["optimizer_gap"][s],
                    [(sgd, f), (adamw, f)],
                    np.subtract,
                    margin=margin if s == "ViT_C" else None,
                )
            )
        if len(have) == 2:
            parts = [(G[key, epochs, s, o], f) for s in ("ViT_P", "ViT_C") for o in ("sgd", "adamw")]
            rows.append(
                _row(
                    f"{claim}_difference",
                    "ViT_P vs ViT_C",
                    "",
                    setting,
                    f"ViT_P gap - ViT_C gap, {words} SGD - AdamW (points)",
                    PAPER["optimizer_gap_difference"],
                    parts,
                    lambda a, b, c, d: (a - b) - (c - d),
                )
            )
    return rows


def _spread_rows(G: dict, key: str, epochs, within: float, area_range: float, subsample: float) -> list[dict]:
    """within_k, edf_area and peak per optimizer (and stem), for one setting."""
    setting = f"{key}, {epochs:g} epochs"
    optimizers = sorted({o for (k, e, _, o) in G if (k, e) == (key, epochs)})
    within_f = lambda x: within_fraction(x, within)  # noqa: E731
    area_f = lambda x: capped_excess(x, area_range)  # noqa: E731
    best = group_stat("best_of", subsample)
    rows = []
    for claim, words, f in (
        ("within_k", f"fraction within {within:g} points of the group's best", within_f),
        ("peak", f"best-of-{subsample:.0%} error (%)", best),
    ):
        for o in optimizers:
            pair = [G.get((key, epochs, s, o)) for s in ("ViT_P", "ViT_C")]
            for g in pair:
                if g is not None:
                    rows.append(_row(claim, g.model, o, setting, words, PAPER[claim], [(g, f)], level=True))
            if None in pair:
                continue
            p, c = pair
            if claim == "within_k":
                rows.append(
                    _row(
                        "within_k_difference",
                        "ViT_P vs ViT_C",
                        o,
                        setting,
                        f"ViT_C - ViT_P {words}",
                        PAPER["within_k_difference"],
                        [(c, f), (p, f)],
                        np.subtract,
                    )
                )
                rows.append(
                    _row(
                        "edf_area",
                        "ViT_P vs ViT_C",
                        o,
                        setting,
                        f"mean height of ViT_C's EDF of error - best above ViT_P's, 0-{area_range:g} points",
                        PAPER["edf_area"],
                        [(p, area_f), (c, area_f)],
                        lambda a, b: (a - b) / area_range,
                    )
                )
            else:
                rows.append(
                    _row(
                        "peak_difference",
                        "ViT_P vs ViT_C",
                        o,
                        setting,
                        f"ViT_P - ViT_C best-of-{subsample:.0%} error (points)",
                        PAPER["peak_difference"],
                        [(p, f), (c, f)],
                        np.subtract,
                    )
                )
    return rows


def _schedule_rows(G: dict, key: str, lengths: list, margin: float) -> list[dict]:
    """schedule_loss per stem and optimizer, and its difference, between the shortest and longest schedule."""
    short, long = min(lengths), max(lengths)
    setting = f"{key}, {short:g} vs {long:g} epochs"
    words = f"median error at {short:g} - at {long:g} epochs (points)"
    optimizers = sorted({o for (k, e, _, o) in G if k == key and e in (short, long)})
    rows = []
    for o in optimizers:
        have = [s for s in ("ViT_P", "ViT_C") if (key, short, s, o) in G and (key, long, s, o) in G]
        for s in have:
            a, b = G[key, short, s, o], G[key, long, s, o]
            rows.append(
                _row(
                    "schedule_loss",
                    a.model,
                    o,
                    setting,
                    words,
                    PAPER["schedule_loss"][s],
                    [(a, median), (b, median)],
                    np.subtract,
                    margin=margin if s == "ViT_C" else None,
                )
            )
        if len(have) == 2:
            parts = [(G[key, e, s, o], median) for s in ("ViT_P", "ViT_C") for e in (short, long)]
            rows.append(
                _row(
                    "schedule_loss_difference",
                    "ViT_P vs ViT_C",
                    o,
                    setting,
                    "ViT_P loss - ViT_C loss, " + words,
                    PAPER["schedule_loss_difference"],
                    parts,
                    lambda a, b, c, d: (a - b) - (c - d),
                )
            )
    return rows


def claims_table(
    df: pd.DataFrame,
    within: float = 4.0,
    resamples: int = 2000,
    seed: int = 0,
    subsample: float = 0.25,
    area_range: float = 20.0,
    margin: float = MARGIN,
) -> pd.DataFrame:
    """Return one row per claim, stem and optimizer the sweep frame can speak to (see the module
    docstring): columns COLUMNS. `within`: the k of within_k (points); `resamples`: bootstrap
    resamples; `seed`: their seed; `subsample`: the fraction of a group's runs the best-of statistics
    draw (pycls: 0.25); `area_range`: the span (points above best) of edf_area; `margin`: the
    equivalence margin (points) of the insensitivity claims. A frame without ViT_P or ViT_C runs gives
    an empty table; bad arguments raise ConfigError."""
    if not within > 0 or not area_range > 0 or not margin > 0:
        raise ConfigError(
            f"within, area_range and margin must be positive points, got {within}, {area_range} and {margin}"
        )
    if not 0 < subsample <= 1:
        raise ConfigError(f"subsample must be in (0, 1], got {subsample}")
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 100:
        raise ConfigError(f"resamples must be an integer >= 100, got {resamples!r}")
    df = _frame(df)
    args = (within, resamples, seed, subsample, area_range, margin)
    table = _rows(df, *args)
    div = diverged_mask(df)
    if table.empty or not div.any():
        table["verdict_without_diverged"] = table["verdict"]
        return table
    without = _rows(df[~div], *args).set_index(["claim", "subject", "optimizer", "setting"])["verdict"]
    keys = list(zip(table["claim"], table["subject"], table["optimizer"], table["setting"]))
    table["verdict_without_diverged"] = [without.get(k, "") for k in keys]
    rests = (table["diverged"] > 0) & (table["verdict"] != table["verdict_without_diverged"])
    table.loc[rests, "note"] = [
        (f"{n} + " if n else "") + f"the verdict rests on {d} diverged run(s) at 100%; without them: {w or 'no row'}"
        for n, d, w in zip(
            table.loc[rests, "note"], table.loc[rests, "diverged"], table.loc[rests, "verdict_without_diverged"]
        )
    ]
    return table


def _rows(df: pd.DataFrame, within, resamples, seed, subsample, area_range, margin) -> pd.DataFrame:
    """The table's rows for a frame from _frame (see claims_table)."""
    G = _groups(df, resamples, seed)
    rows = []
    for key in sorted({k for (k, _, _, _) in G}):
        lengths = sorted({e for (k, e, _, _) in G if k == key})
        for epochs in lengths:
            rows += _gap_rows(G, key, epochs, subsample, margin)
            rows += _spread_rows(G, key, epochs, within, area_range, subsample)
        if len(lengths) > 1:
            rows += _schedule_rows(G, key, lengths, margin)
    return pd.DataFrame(rows, columns=COLUMNS)


# ---------------------------------------------------------------- display

VERDICT_COLORS = {
    "reproduced": "#d4edda",
    "contradicted": "#f8d7da",
    "inconclusive": "#eeeeee",
    "insufficient": "#fff3cd",
}


def _number(v: float) -> str:
    return "-" if not np.isfinite(v) else f"{v:.2f}"


def _display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as strings: estimate and interval formatted, in reading order."""
    out = table[["claim", "subject", "optimizer", "setting"]].copy()
    out["estimate"] = table["estimate"].map(_number)
    out["95% interval"] = [
        f"[{_number(lo)}, {_number(hi)}]" if np.isfinite(lo) else "-" for lo, hi in zip(table["low"], table["high"])
    ]
    for c in ("test", "verdict", "n", "diverged", "statistic", "paper", "note"):
        out[c] = table[c].astype(str)
    return out


def claims_text(table: pd.DataFrame) -> str:
    """Return the claims table as fixed-width text for a terminal."""
    if table.empty:
        return "no claims: the frame holds no ViT_P / ViT_C runs to compare"
    shown = _display(table)
    widths = {c: max(len(c), *(len(v) for v in shown[c])) for c in shown.columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in shown.columns).rstrip()]
    for row in shown.itertuples(index=False):
        lines.append("  ".join(str(v).ljust(widths[c]) for c, v in zip(shown.columns, row)).rstrip())
    return "\n".join(lines)


# the claims table scrolls sideways instead of squeezing: one line per cell but the last three (prose)
CLAIMS_CSS = (
    "<style>.stemlab-claims{overflow-x:auto;max-width:100%}.stemlab-claims td,.stemlab-claims th"
    "{white-space:nowrap;line-height:1.3}"
    ".stemlab-claims td:nth-last-child(-n+3){white-space:normal;min-width:170px}</style>"
)


def claims_html(table: pd.DataFrame) -> str:
    """Return the claims table as HTML: a <table class="claims"> with inline styles (verdicts
    coloured) in a box that scrolls sideways where the page is narrower than the table."""
    if table.empty:
        return "<p class=claims>no claims: the frame holds no ViT_P / ViT_C runs to compare</p>"
    rows = html_table(
        _display(table),
        cell_colours={"verdict": VERDICT_COLORS},
        cell_style="padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top",
        attrs="class=claims style='border-collapse:collapse;font-size:90%'",
    )
    return f"{CLAIMS_CSS}<div class='stemlab-claims'>{rows}</div>"
