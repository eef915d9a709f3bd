"""Replication over seeds: the claims table of several sweeps of one spec, each on its own seed.

    from analysis.replication import seed_specs, replication_table, replication_text
    tables = {seed: claims_table(collect(d)) for seed, d in sweeps.items()}
    rep = replication_table(tables)          # a row per claim: each seed's estimate, interval, verdict
    print(replication_text(rep))             # or: python -m analysis claims DIR_A DIR_B DIR_C

A claim is *replicated* (column `replicated`) when at least `required` of the seeds reproduce it:
by default two thirds of them, rounded up (2 of 3, the rule the README's headline uses); it is
"contradicted" when as many contradict it, "insufficient" when fewer seeds than that give a verdict
at all (groups under analysis.claims.MIN_RUNS runs), else "inconclusive" (neither way on enough seeds).
"""

from __future__ import annotations

import copy
import math

import pandas as pd

from analysis.claims import _number
from analysis.errors import ConfigError

KEY = ["claim", "subject", "optimizer", "setting"]


def seed_specs(spec: dict, seeds: list[int]) -> list[dict]:
    """The spec once per seed: its sampling seed and base train.seed set to the seed; the first keeps
    the spec's name, the others are named "<name>-seed<seed>" (each its own sweep folder)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct, got {seeds}")
    out, name = [], str(spec.get("name") or "sweep")
    for i, seed in enumerate(seeds):
        d = copy.deepcopy(spec)
        d["seed"] = seed
        base = d["base"] = d.get("base") or {}
        if not isinstance(base, dict):
            raise ConfigError("base must be a mapping to set its train.seed")
        base.pop("train.seed", None)  # a dotted key: replaced by the nested one
        train = base["train"] = base.get("train") or {}
        if not isinstance(train, dict):
            raise ConfigError("base.train must be a mapping to set its seed")
        train["seed"] = seed
        d["name"] = f"{name}-seed{seed}" if i else name
        out.append(d)
    return out


def same_spec(specs: list[dict]) -> None:
    """Refuse (one line) sweeps whose specs differ in anything but their name and seeds."""

    def strip(d: dict) -> dict:
        d = copy.deepcopy(d)
        for k in ("name", "seed", "launch", "description"):
            d.pop(k, None)
        ((d.get("base") or {}).get("train") or {}).pop("seed", None)
        return d

    first = strip(specs[0])
    for i, s in enumerate(specs[1:], 1):
        if strip(s) != first:
            raise ConfigError(
                f"sweep {i + 1} ({s.get('name')}) is not the same spec as sweep 1 ({specs[0].get('name')}): "
                "replication compares sweeps that differ only in their seeds"
            )


def sweep_tables(sweep_dirs: list, **claims_args) -> dict:
    """{"seed N": claims_table} of each sweep folder (collected), in order; sweeps of different specs
    (anything but name and seeds) are refused in one line, as is a sweep with no runs. One folder (a
    sweep, or a folder of run folders) gives {"": its claims table}."""
    from analysis.claims import claims_table
    from analysis.sweeps import collect
    from analysis.sweeps.folder import SweepFolder

    single = len(sweep_dirs) == 1  # one sweep (or a folder of run folders): no spec needed
    folders = [None] if single else [SweepFolder.open(d) for d in sweep_dirs]
    if not single:
        same_spec([f.spec_dict for f in folders])
    tables = {}
    for d, f in zip(sweep_dirs, folders):
        df = collect(d if f is None else f.dir)
        if df.empty:
            raise ConfigError(f"{d} holds no runs; launch the sweep first")
        label = "" if f is None else f"seed {f.spec_dict.get('seed', 0)}"
        if label in tables:
            raise ConfigError(f"{d}: {label} twice; replication compares sweeps on different seeds")
        tables[label] = claims_table(df, **claims_args)
    return tables


def replication_table(tables: dict, required: int | None = None) -> pd.DataFrame:
    """One row per claim row (claim, subject, optimizer, setting) of the per-seed claims tables
    {seed label: claims_table}: for each seed `<label> estimate`, `<label> interval` and
    `<label> verdict`, then `reproduced` ("k of N"), `replicated` (see the module) and `test`."""
    if len(tables) < 2:
        raise ConfigError(f"replication needs at least 2 sweeps, got {len(tables)}")
    need = required if required is not None else math.ceil(2 * len(tables) / 3)
    if not 1 <= need <= len(tables):
        raise ConfigError(f"required must be in 1..{len(tables)}, got {need}")
    order, rows = [], {}
    for label, table in tables.items():
        for r in table.itertuples(index=False):
            key = tuple(getattr(r, k) for k in KEY)
            if key not in rows:
                order.append(key)
                rows[key] = {**dict(zip(KEY, key)), "test": r.test}
            interval = f"[{_number(r.low)}, {_number(r.high)}]" if math.isfinite(r.low) else "-"
            rows[key].update(
                {f"{label} estimate": r.estimate, f"{label} interval": interval, f"{label} verdict": r.verdict}
            )
    out = []
    for key in order:
        row = rows[key]
        verdicts = [row.get(f"{label} verdict", "missing") for label in tables]
        if not row["test"]:  # a level (a stem's own within_k or peak): no verdict to replicate
            continue
        n_rep, n_con = verdicts.count("reproduced"), verdicts.count("contradicted")
        decided = sum(v in ("reproduced", "contradicted", "inconclusive") for v in verdicts)
        replicated = (
            "reproduced"
            if n_rep >= need
            else "contradicted"
            if n_con >= need
            else "insufficient"
            if decided < need
            else "inconclusive"
        )
        out.append({**row, "reproduced": f"{n_rep} of {len(tables)}", "replicated": replicated})
    cols = KEY + [f"{label} {c}" for label in tables for c in ("estimate", "interval", "verdict")]
    return pd.DataFrame(out, columns=cols + ["test", "reproduced", "replicated"])


def replication_text(rep: pd.DataFrame) -> str:
    """The replication table as fixed-width text: a line per claim row, a column per seed."""
    if rep.empty:
        return "no claims to replicate: the sweeps hold no ViT_P / ViT_C comparisons"
    labels = [c.removesuffix(" estimate") for c in rep.columns if c.endswith(" estimate")]
    shown = rep[KEY].astype(str).copy()
    for label in labels:
        shown[label] = [
            f"{_number(e)} {i} {v}" if isinstance(v, str) else "-"
            for e, i, v in zip(rep[f"{label} estimate"], rep[f"{label} interval"], rep[f"{label} verdict"])
        ]
    for c in ("test", "reproduced", "replicated"):
        shown[c] = rep[c].astype(str)
    widths = {c: max(len(c), *(len(v) for v in shown[c])) for c in shown.columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in shown.columns).rstrip()]
    for row in shown.itertuples(index=False):
        lines.append("  ".join(str(v).ljust(widths[c]) for c, v in zip(shown.columns, row)).rstrip())
    return "\n".join(lines)
