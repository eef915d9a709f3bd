"""Regime studies: the claims per setting, each setting's cost, the selection rule, the forest plot."""

import numpy as np
import pandas as pd
import pytest
from tests.test_claims import frame, stable_vs_unstable

from analysis.claims import claims_table, setting_of
from analysis.errors import ConfigError
from analysis.plots import forest_figure
from analysis.plots.forest import beside, short_setting
from analysis.regimes import choose_regime, regime_summary


def regime(size: str, epochs: int, per_class: int, stable: bool, seed: int, flops: float, seconds: float):
    errors = (
        stable_vs_unstable("C", "P", seed=seed)
        if stable
        else {k: v for k, v in stable_vs_unstable("C", "C", seed=seed).items()}
        | {("P", o): list(10 + np.random.default_rng(seed).exponential(0.8, 16)) for o in ("adamw", "sgd")}
    )
    return frame(errors, size=size, epochs=epochs).assign(
        **{"cfg.data.train_per_class": per_class, "cfg.train.epochs": epochs, "flops": flops, "seconds": seconds}
    )


@pytest.fixture(scope="module")
def study():
    parts = [
        regime("fmnist_tiny", 6, 200, False, 1, 12.0e6, 20.0),  # p4: over budget
        regime("fmnist_p16_tiny", 6, 200, False, 2, 4.0e6, 8.0),  # fits, nothing reproduced
        regime("fmnist_p16_tiny", 12, 100, True, 3, 4.0e6, 8.0),  # fits, claims reproduced
        regime("fmnist_p16_tiny", 15, 200, True, 4, 4.0e6, 20.0),
    ]  # over budget, reproduced
    df = pd.concat(parts, ignore_index=True)
    return df, claims_table(df, resamples=500)


def test_summary_costs_and_the_selection_rule(study):
    df, table = study
    assert set(setting_of(df)) == set(table.setting) - {s for s in table.setting if " vs " in s}
    s = regime_summary(df, table).set_index("setting")
    p16_12 = "fmnist_p16_tiny, data.train_per_class=100, 12 epochs"
    assert s.loc[p16_12, "runs"] == 64 and s.loc[p16_12, "cpu_minutes"] == pytest.approx(64 * 8 / 60)
    assert s.loc[p16_12, "work_gflop"] == pytest.approx(12000 * 4.0e6 / 1e9) and s.loc[p16_12, "fits_budget"]
    assert not s.loc["fmnist_tiny, data.train_per_class=200, 6 epochs", "fits_budget"]
    assert s.loc[p16_12, "reproduced"] >= 5 and s.loc[p16_12, "geometry"] == "p16"
    summary = regime_summary(df, table)
    assert choose_regime(summary) == p16_12
    assert choose_regime(summary, within_budget=False) == "fmnist_p16_tiny, data.train_per_class=200, 15 epochs"
    with pytest.raises(ConfigError, match="seconds"):
        regime_summary(df.drop(columns="seconds"), table)


def test_forest_figure_has_a_row_per_regime_and_marks_the_paper(study):
    _, table = study
    fig = forest_figure(table)
    points = [t for t in fig.data if t.meta]
    settings = {t.meta["setting"] for t in points}
    assert len(settings) == 4
    gap = [t for t in points if t.meta["claim"] == "optimizer_gap_difference"]
    assert len(gap) == 4 and all(len(t.error_x.array) == 1 for t in gap)
    reproduced = [t for t in gap if t.meta["verdict"] == "reproduced"]
    assert reproduced and all(t.marker.color == "#2ca02c" for t in reproduced)
    shapes = [sh for sh in fig.layout.shapes if sh.type == "rect"]
    assert any(sh.x0 == -2 and sh.x1 == 2 for sh in shapes)  # ViT_C's equivalence margin
    assert any(sh.x0 == 0 and sh.x1 > 100 for sh in shapes)  # right of 0: the paper's direction
    assert "p16_tiny, 100/class, 12 ep" in list(fig.layout.yaxis.ticktext)
    assert short_setting("cifar_p16, data.train_per_class=50, 6 epochs") == "p16, 50/class, 6 ep"
    with pytest.raises(ConfigError, match="no rows"):
        forest_figure(table[table.claim == "peak"])


def test_two_studies_beside_each_other_in_one_forest_plot(study):
    _, table = study
    both, labels = beside({"n=6": table, "powered": table[table.setting.str.contains("p16")]})
    fig = forest_figure(both, labels=labels)
    ticks = list(fig.layout.yaxis.ticktext)
    n6 = [t for t in ticks if t.startswith("n=6 · ")]
    powered = [t for t in ticks if t.startswith("powered · ")]
    assert len(n6) == 4 and len(powered) == 3 and ticks == n6 + powered  # the first study on top
    assert "powered · p16_tiny, 100/class, 12 ep" in powered
    rows = both[both.claim.eq("peak_difference")]
    assert len(rows) == 2 * len(table[table.claim.eq("peak_difference") & table.setting.str.contains("p16")]) + len(
        table[table.claim.eq("peak_difference") & ~table.setting.str.contains("p16")]
    )


def test_report_adds_the_regime_section_only_for_several_settings(study):
    from analysis.report import _regime_section

    df, table = study
    parts = _regime_section(df, table)
    assert "Regimes" in parts[0] and "fmnist_p16_tiny, data.train_per_class=100, 12 epochs" in parts[2]
    assert "plotly" in parts[-1]
    one = table[table.setting.str.contains("12 epochs")]
    assert _regime_section(df, one) == []
