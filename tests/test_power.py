"""The powered study's power calculation: simulation with the claims code's own bootstrap."""

import numpy as np
import pandas as pd
import pytest
from tests.test_claims import frame

from analysis.errors import ConfigError
from analysis.power import GROUPS, pairs_needed, pilot_errors, power, power_curve


def synthetic(spread: float, n: int = 12, seed: int = 0, shifts=(0, 0, 0, 0)) -> dict:
    """Four groups of errors, 30 + |normal| * spread, each shifted by its entry of shifts."""
    rng = np.random.default_rng(seed)
    return {k: 30 + s + np.abs(rng.normal(0, spread, n)) for k, s in zip(GROUPS, shifts)}


def test_power_grows_with_the_runs_and_the_true_difference():
    pilot = synthetic(spread=3.0)
    curve = power_curve(pilot, candidates=(8, 32, 96), delta=3.0, sims=80, resamples=300)
    assert curve.difference.is_monotonic_increasing and curve.difference.iloc[-1] >= 0.8
    assert curve.difference.iloc[0] < 0.6  # 8 runs cannot resolve 3 points at this spread
    assert (curve.primary <= curve.difference + 1e-12).all() and (curve.primary <= curve.equivalence + 1e-12).all()
    big = power(pilot, 32, delta=8.0, sims=80, resamples=300)["difference"]
    assert big >= curve.difference.iloc[1]


def test_with_no_true_difference_the_one_sided_claim_is_rarely_reproduced():
    """delta 0: the difference row's 'reproduced' rate is the test's size, about 2.5% one-sided."""
    p = power(synthetic(spread=3.0), 48, delta=0.0, sims=200, resamples=300)
    assert p["difference"] <= 0.08


def test_the_truth_is_set_by_shifting_so_the_pilots_own_gaps_do_not_matter():
    """The same spreads with a 10-point ViT_P SGD gap built in give the same power: the simulation
    imposes the difference delta and a zero ViT_C gap whatever the pilot's own gaps are."""
    a = power(synthetic(spread=2.0, seed=3), 24, sims=60, resamples=200, seed=5)
    b = power(synthetic(spread=2.0, seed=3, shifts=(0, 10, 0, -4)), 24, sims=60, resamples=200, seed=5)
    assert a == pytest.approx(b, abs=1e-9)


def test_pairs_needed_and_pilot_errors_from_a_sweep_frame():
    pilot = synthetic(spread=3.0)
    n = pairs_needed(pilot, candidates=(8, 32, 96), sims=80, resamples=300)
    assert n in (32, 96)
    assert pairs_needed(synthetic(spread=40.0), candidates=(8, 16), sims=40, resamples=200) is None
    errors = {("P", "adamw"): [10, 11, 12], ("P", "sgd"): [14, 15, 100], ("C", "adamw"): [9, 9, 10]}
    errors[("C", "sgd")] = [9, 10, 11]
    got = pilot_errors(frame(errors), "fmnist_tiny, 4 epochs")
    assert sorted(got[("ViT_P", "sgd")]) == [14, 15, 100]  # a diverged run counts at 100
    with pytest.raises(ConfigError, match="fewer than 3 counted runs"):
        pilot_errors(frame({**errors, ("C", "sgd"): [9]}), "fmnist_tiny, 4 epochs")
    with pytest.raises(ConfigError, match="pilot errors missing"):
        power({GROUPS[0]: [1.0]}, 8)


def test_the_powered_study_spec_draws_what_its_plan_analyses_on_an_unused_seed():
    """jobs/fmnist_power.yaml: 48 pairs per model x optimizer x regime drawn, the plan analyses the first
    n of each cell (48 or 24, from the power calculation), and its seed is used by no other spec."""
    from pathlib import Path

    from analysis.names import preset_size
    from analysis.power import STUDY_PLAN, planned_runs
    from analysis.sweeps import Spec

    jobs = Path(__file__).resolve().parents[1] / "jobs"
    spec = Spec.from_yaml(jobs / "fmnist_power.yaml")
    rows = spec.runs()
    ids, configs = [r["run"] for r in rows], {r["run"]: r["cfg"] for r in rows}
    assert len(rows) == 4 * 2 * 2 * 48
    plan = planned_runs(ids, configs)
    cells = {}
    for r in plan:
        c = configs[r]
        cells.setdefault((preset_size(c.model.preset), c.train.epochs, c.model.preset, c.optim.name), []).append(r)
    assert len(cells) == 16 and len(plan) == sum(4 * n for n in STUDY_PLAN.values())
    for (size, epochs, _, _), runs in cells.items():
        assert len(runs) == STUDY_PLAN[size, epochs] >= 24
        assert runs == [r for r in ids if r in set(runs)][: len(runs)]  # the first n of the cell, in order
    seeds = {s.seed for s in map(Spec.from_yaml, jobs.glob("*.yaml")) if s.name != "fmnist_power"}
    assert spec.seed not in seeds | {3, 4} and {c.train.seed for c in configs.values()} == {spec.seed}


def test_the_primary_claim_per_setting_and_the_selection_rule():
    """Both rows must be reproduced; among such settings the cheapest runs win; none: no pick."""
    from tests.test_claims import stable_vs_unstable

    from analysis.claims import claims_table
    from analysis.power import choose_main_regime, primary_table

    shows = frame(stable_vs_unstable("C", "P", n=24, seed=1), size="fmnist_tiny", epochs=10)
    flat = frame({k: [30.0 + i % 5 for i in range(24)] for k in stable_vs_unstable("C", "P")}, epochs=20)
    df = pd.concat([shows.assign(seconds=40.0), flat.assign(seconds=80.0)], ignore_index=True)
    table = primary_table(claims_table(df, resamples=500), df)
    assert list(table["setting"]) == ["fmnist_tiny, 10 epochs", "fmnist_tiny, 20 epochs"]
    assert list(table["primary"]) == [True, False] and table["seconds_per_run"].tolist() == [40.0, 80.0]
    assert choose_main_regime(table) == "fmnist_tiny, 10 epochs"
    assert choose_main_regime(table[~table["primary"]]) is None
