"""The paper's claims as statistics: constructed frames whose answer is known, and the fixture sweep."""

import numpy as np
import pandas as pd
import pytest
from tests.fixtures_sweep import sweep, sweep_frame  # noqa: F401  (pytest fixtures)

from analysis.claims import COLUMNS, VERDICTS, best_of, claims_html, claims_table, claims_text
from analysis.errors import ConfigError
from analysis.plots import bootstrap_best
from analysis.sweeps import model_name

STEM = {"P": ("patchify", "vit_p_{}"), "C": ("conv", "vit_c_{}")}


def frame(errors: dict, size: str = "fmnist_tiny", epochs: int = 4) -> pd.DataFrame:
    """A collected-sweep-like frame: {("P" or "C", optimizer): errors}; an error of 100 is a diverged
    run and None a failed one."""
    rows = []
    for (stem, optimizer), errs in errors.items():
        kind, preset = STEM[stem]
        for e in errs:
            status = "failed" if e is None else "diverged" if e == 100 else "completed"
            rows.append(
                dict(
                    run=f"r{len(rows):03d}",
                    status=status,
                    model=model_name(preset.format(size), kind),
                    preset=preset.format(size),
                    stem=kind,
                    optimizer=optimizer,
                    epochs=epochs,
                    error=np.nan if e is None else float(e),
                    diverged=status == "diverged",
                )
            )
    return pd.DataFrame(rows)


def stable_vs_unstable(stable: str, unstable: str, n: int = 16, seed: int = 0) -> dict:
    """`stable` stem: SGD about as good as AdamW, tight; `unstable`: SGD 8 points worse, wide, some diverged."""
    rng = np.random.default_rng(seed)
    bad_sgd = list(20 + rng.exponential(10, n - 3)) + [100, 100, 100]
    return {
        (stable, "adamw"): list(10 + rng.exponential(0.8, n)),
        (stable, "sgd"): list(10.3 + rng.exponential(0.8, n)),
        (unstable, "adamw"): list(12 + rng.exponential(4, n)),
        (unstable, "sgd"): bad_sgd,
    }


def verdicts(table: pd.DataFrame) -> dict:
    """{(claim, subject, optimizer): verdict} of the rows."""
    return {(r.claim, r.subject, r.optimizer): r.verdict for r in table.itertuples()}


COMPARISONS = [
    ("optimizer_gap_difference", ""),
    ("optimizer_gap_best_difference", ""),
    ("within_k_difference", "sgd"),
    ("edf_area", "sgd"),
    ("peak_difference", "sgd"),
]


def test_a_clearly_more_stable_conv_stem_reproduces_the_paper():
    table = claims_table(frame(stable_vs_unstable("C", "P")))
    assert list(table.columns) == COLUMNS
    assert set(table.verdict) <= {*VERDICTS, ""}
    v = verdicts(table)
    for claim, opt in COMPARISONS:
        assert v[claim, "ViT_P vs ViT_C", opt] == "reproduced", claim
    assert v["optimizer_gap", "ViT_P-fmnist_tiny", ""] == "reproduced"
    assert v["within_k", "ViT_C-fmnist_tiny", "sgd"] == ""  # a level: its difference carries the verdict
    row = table[(table.claim == "optimizer_gap") & (table.subject == "ViT_P-fmnist_tiny")].iloc[0]
    assert row.low <= row.estimate <= row.high and row.n == "32/32" and row.excluded == 0


def test_the_reverse_is_contradicted():
    v = verdicts(claims_table(frame(stable_vs_unstable("P", "C"))))
    for claim, opt in COMPARISONS:
        assert v[claim, "ViT_P vs ViT_C", opt] == "contradicted", claim


def test_identical_stems_are_inconclusive():
    rng = np.random.default_rng(1)
    same = {o: list(10 + rng.exponential(3, 16)) for o in ("adamw", "sgd")}
    table = claims_table(frame({(s, o): same[o] for s in "PC" for o in same}))
    comparisons = table[table.subject == "ViT_P vs ViT_C"]
    assert len(comparisons) == 2 + 2 * 3  # two gap differences; within_k, edf_area, peak per optimizer
    assert set(comparisons.verdict) == {"inconclusive"}
    assert np.allclose(comparisons.estimate, 0.0)
    assert (comparisons.low < 0).all() and (comparisons.high > 0).all()


def test_estimates_by_hand_and_diverged_runs_at_100():
    errors = {
        ("P", "adamw"): [10, 11, 12, 13],
        ("P", "sgd"): [12, 14, 100, 100, None],
        ("C", "adamw"): [9, 10, 11],
        ("C", "sgd"): [9.5, 10, 30],
    }
    t = claims_table(frame(errors), within=2.0).set_index(["claim", "subject", "optimizer"])
    assert t.loc[("optimizer_gap", "ViT_P-fmnist_tiny", ""), "estimate"] == pytest.approx(57.0 - 11.5)
    assert t.loc[("optimizer_gap", "ViT_P-fmnist_tiny", ""), "n"] == "8/9"
    assert t.loc[("optimizer_gap", "ViT_P-fmnist_tiny", ""), "excluded"] == 1  # the failed run
    assert t.loc[("optimizer_gap", "ViT_C-fmnist_tiny", ""), "estimate"] == pytest.approx(0.0)
    assert t.loc[("within_k", "ViT_P-fmnist_tiny", "adamw"), "estimate"] == 0.75  # 10, 11, 12 of 10-13
    assert t.loc[("within_k", "ViT_P-fmnist_tiny", "sgd"), "estimate"] == 0.5
    assert t.loc[("within_k_difference", "ViT_P vs ViT_C", "sgd"), "estimate"] == pytest.approx(2 / 3 - 0.5)
    # edf_area: mean of min(error - best, 20) is (0 + 2 + 20 + 20) / 4 for P, (0 + 0.5 + 20) / 3 for C
    area = ((42 / 4) - (20.5 / 3)) / 20
    assert t.loc[("edf_area", "ViT_P vs ViT_C", "sgd"), "estimate"] == pytest.approx(area)
    # best of 25%: with m = 1 run drawn, pycls' bootstrap best is the median run
    assert t.loc[("peak", "ViT_P-fmnist_tiny", "sgd"), "estimate"] == 14.0
    assert t.loc[("peak_difference", "ViT_P vs ViT_C", "adamw"), "estimate"] == pytest.approx(11.0 - 10.0)


def test_small_groups_give_rows_without_interval_and_say_why():
    """Fewer than 8 counted runs in a group: the estimate, no interval, "insufficient" (not a verdict)."""
    errors = {
        ("P", "adamw"): [10, 11, 10, 11, 10, 11, 10],
        ("P", "sgd"): [12, 14, 16, 12, 14, 16, 14, 14],
        ("C", "adamw"): [9, 10, 11, 9, 10, 11, 9, 10],
        ("C", "sgd"): [9, 10, 11, 9, 10, 11, 9, 10],
    }
    t = claims_table(frame(errors))
    p_gap = t[(t.claim == "optimizer_gap") & (t.subject == "ViT_P-fmnist_tiny")].iloc[0]
    assert p_gap.verdict == "insufficient" and np.isnan(p_gap.low) and np.isnan(p_gap.high)
    assert p_gap.estimate == pytest.approx(14 - 10)
    assert "fewer than 8 runs in ViT_P-fmnist_tiny adamw" in p_gap.note
    diff = t[t.claim == "optimizer_gap_difference"].iloc[0]
    assert diff.verdict == "insufficient" and diff.verdict_without_diverged == "insufficient"
    c_gap = t[(t.claim == "optimizer_gap") & (t.subject == "ViT_C-fmnist_tiny")].iloc[0]
    assert c_gap.note == "" and np.isfinite(c_gap.low)


def test_stems_pair_by_size_not_across_sizes():
    small = stable_vs_unstable("C", "P", seed=2)
    big = {(s, o): [e + 50 for e in errs] for (s, o), errs in stable_vs_unstable("C", "P", seed=3).items()}
    df = pd.concat([frame(small, size="1gf"), frame(big, size="4gf")], ignore_index=True)
    t = claims_table(df)
    peaks = t[t.claim == "peak_difference"]
    assert sorted(set(peaks.setting)) == ["1GF, 4 epochs", "4GF, 4 epochs"]
    alone = claims_table(frame(small, size="1gf"))
    pd.testing.assert_frame_equal(t[t.setting.str.startswith("1GF")].reset_index(drop=True), alone)
    assert set(t.subject) >= {"ViT_P-1GF", "ViT_C-4GF", "ViT_P vs ViT_C"}


def test_schedule_length_rows_when_epochs_vary():
    rng = np.random.default_rng(4)
    parts = []
    for epochs, p_loss, c_loss in ((2, 15.0, 2.0), (8, 0.0, 0.0)):
        errs = {("P", o): list(12 + p_loss + rng.normal(0, 0.5, 8)) for o in ("adamw", "sgd")}
        errs.update({("C", o): list(10 + c_loss + rng.normal(0, 0.5, 8)) for o in ("adamw", "sgd")})
        parts.append(frame(errs, epochs=epochs))
    t = claims_table(pd.concat(parts, ignore_index=True))
    sched = t[t.claim.str.startswith("schedule_loss")].set_index(["claim", "subject", "optimizer"])
    assert set(sched.setting) == {"fmnist_tiny, 2 vs 8 epochs"}
    assert sched.loc[("schedule_loss", "ViT_P-fmnist_tiny", "sgd"), "estimate"] == pytest.approx(15, abs=1)
    assert sched.loc[("schedule_loss_difference", "ViT_P vs ViT_C", "adamw"), "verdict"] == "reproduced"
    assert not claims_table(parts[0]).claim.str.startswith("schedule").any()


def test_fixture_sweep(sweep):  # noqa: F811
    t = claims_table(sweep)
    main = t[t.setting == "fmnist, 20 epochs"].set_index(["claim", "subject", "optimizer"])
    # the fixture's patchify stem is steeper in lr/wd, 2.5 points worse with SGD, and diverges at high lr
    assert main.loc[("optimizer_gap_best_difference", "ViT_P vs ViT_C", ""), "verdict"] == "reproduced"
    assert main.loc[("peak_difference", "ViT_P vs ViT_C", "sgd"), "verdict"] == "reproduced"
    assert main.loc[("edf_area", "ViT_P vs ViT_C", "sgd"), "verdict"] == "reproduced"
    # failed, running and pending runs are left out and counted
    assert main.loc[("within_k", "ViT_C-fmnist", "sgd"), ["n", "excluded"]].tolist() == ["18/19", 1]
    assert main.loc[("within_k", "ViT_P-fmnist", "adamw"), ["n", "excluded"]].tolist() == ["18/19", 1]
    # 10 and 40 epochs hold two tuned runs per group: estimates without intervals
    short = t[t.setting == "fmnist, 10 epochs"]
    assert len(short) and (short.verdict.isin(["insufficient", ""])).all() and short.low.isna().all()
    assert (t.claim == "schedule_loss_difference").sum() == 2


def test_deterministic_under_the_seed(sweep):  # noqa: F811
    a, b = claims_table(sweep, seed=3), claims_table(sweep, seed=3)
    pd.testing.assert_frame_equal(a, b)
    c = claims_table(sweep, seed=4)
    pd.testing.assert_series_equal(a.estimate, c.estimate)
    assert not np.allclose(a.low.dropna(), c.low.dropna())
    # each group has its own generator: dropping one model's rows leaves the other's intervals alone
    only_c = claims_table(sweep[sweep.stem == "conv"], seed=3)
    mine = a[a.subject == "ViT_C-fmnist"].reset_index(drop=True)
    pd.testing.assert_frame_equal(only_c, mine)


def test_best_of_is_pycls_bootstrap_best():
    """The exact best-of-m quantiles equal pycls' sampled bootstrap (2.5/50/97.5 percentiles of the
    best of m draws), sampled here by brute force; the EDF band and the claims share them."""
    rng = np.random.default_rng(5)
    for n in (16, 40, 3):
        e = rng.normal(20, 3, n)
        m = max(1, round(0.25 * n))
        sampled = e[rng.integers(0, n, size=(200_000, m))].min(axis=1)
        for q, exact in zip((0.025, 0.5, 0.975), bootstrap_best(e, 0.25)):
            assert np.mean(sampled <= exact) >= q - 0.003  # exact is the least order statistic reaching q
            below = np.sort(e)[np.searchsorted(np.sort(e), exact) - 1] if exact > e.min() else None
            if below is not None:
                assert np.mean(sampled <= below) < q + 0.003
        assert best_of(e[None, :], 0.25)[0] == bootstrap_best(e, 0.25)[1]


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"within": 0}, ["within", "positive"]),
        ({"subsample": 1.5}, ["subsample", "(0, 1]"]),
        ({"resamples": 10}, ["resamples", ">= 100"]),
        ({"area_range": -1}, ["area_range"]),
        ({"margin": 0}, ["margin", "positive"]),
    ],
)
def test_bad_arguments_are_one_line(sweep, kwargs, words):  # noqa: F811
    with pytest.raises(ConfigError) as e:
        claims_table(sweep, **kwargs)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words)
    with pytest.raises(ConfigError, match="missing column 'stem'"):
        claims_table(sweep.drop(columns="stem"))


def test_text_and_html():
    table = claims_table(frame(stable_vs_unstable("C", "P")))
    text = claims_text(table)
    lines = text.splitlines()
    assert len(lines) == len(table) + 1 and lines[0].split()[:4] == ["claim", "subject", "optimizer", "setting"]
    assert "reproduced" in text and "[" in text
    page = claims_html(table)
    assert "<table class=claims" in page and page.count("<tr>") == len(table) + 1
    # in a notebook the table scrolls sideways (prose columns wrap at a readable width) instead of
    # squeezing its last column to a letter per line
    assert page.startswith("<style>.stemlab-claims{overflow-x:auto") and "<div class='stemlab-claims'>" in page
    assert "td:nth-last-child(-n+3){white-space:normal;min-width:170px}" in page
    assert "background:#d4edda" in page  # reproduced is green
    page = claims_html(claims_table(frame(stable_vs_unstable("P", "C"))))
    assert "background:#f8d7da" in page  # contradicted is red
    empty = claims_table(frame({("P", "adamw"): [10, 11, 12]}).assign(stem="cct"))
    assert empty.empty and list(empty.columns) == COLUMNS
    assert "no claims" in claims_text(empty) and "no claims" in claims_html(empty)


def test_html_table_escapes_every_cell_but_markup_columns():
    from analysis.html import html_table

    df = pd.DataFrame({"run": ["<b>x</b>", "y"], "verdict": ["reproduced", None], "bar": ["<i>bar</i>", "<i></i>"]})
    page = html_table(
        df,
        ["#fff3cd", None],
        cell_colours={"verdict": {"reproduced": "#d4edda"}},
        markup={"bar"},
        attrs="class=t",
        notes=["<script>alert(1)</script>", ""],
    )
    assert page.startswith("<table class=t><thead><tr><th>run</th>")
    assert "<td>&lt;b&gt;x&lt;/b&gt;</td>" in page and "<b>" not in page  # a folder's name stays text
    assert "<td><i>bar</i></td>" in page  # HTML the caller built
    assert '<tr style="background:#fff3cd">' in page and '<td style="background:#d4edda">reproduced</td>' in page
    assert "<tr><td>y</td><td></td>" in page  # no colour, a missing value: an empty cell
    assert '<td colspan="3"><pre style="margin:0;font-size:85%">&lt;script&gt;' in page and "<script>" not in page
    assert page.count("<pre") == 1  # an empty note adds no line
    styled = html_table(df[["run"]], cell_style="padding:1px")
    assert styled.startswith('<table><thead><tr><th style="padding:1px">run</th>') and "<td style" in styled


def test_cli_prints_the_table_and_json(real_sweep, capsys, tmp_path):
    import json

    from analysis.__main__ import main

    assert main(["claims", str(real_sweep)]) == 0
    text = capsys.readouterr().out
    assert text.startswith("claim") and "optimizer_gap" in text and "ViT_P vs ViT_C" in text
    assert main(["claims", str(real_sweep), "--json", "--within", "2", "--resamples", "500"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert {r["claim"] for r in records} >= {"optimizer_gap", "within_k", "peak_difference"}
    assert set(records[0]) == set(COLUMNS)
    assert any("within 2 points" in r["statistic"] for r in records)
    assert main(["claims", str(tmp_path / "nowhere")]) == 2
    assert capsys.readouterr().err.startswith("error: not a folder")


def test_stems_pair_by_data_when_it_varies():
    less = frame(stable_vs_unstable("C", "P", seed=6)).assign(**{"cfg.data.train_per_class": 100})
    more = frame(stable_vs_unstable("C", "P", seed=7)).assign(**{"cfg.data.train_per_class": 500})
    t = claims_table(pd.concat([less, more], ignore_index=True))
    assert set(t.setting) == {
        "fmnist_tiny, data.train_per_class=100, 4 epochs",
        "fmnist_tiny, data.train_per_class=500, 4 epochs",
    }
    assert (t.claim == "optimizer_gap_difference").sum() == 2


def _gap_row(table: pd.DataFrame, subject: str = "ViT_C-fmnist_tiny") -> pd.Series:
    return table[(table.claim == "optimizer_gap") & (table.subject == subject)].iloc[0]


@pytest.mark.parametrize(
    "sgd_shift, spread, verdict",
    [
        (0.3, 0.3, "reproduced"),  # interval inside (-2, 2)
        (-0.5, 0.3, "reproduced"),  # SGD a little better than AdamW: still "within about a point"
        (6.0, 0.3, "contradicted"),  # interval wholly above the margin
        (1.8, 2.5, "inconclusive"),  # interval across the margin
    ],
)
def test_insensitivity_is_an_equivalence_test(sgd_shift, spread, verdict):
    rng = np.random.default_rng(11)
    base = 20 + rng.normal(0, spread, 24)
    errors = {
        ("C", "adamw"): list(base),
        ("C", "sgd"): list(base[rng.permutation(24)] + sgd_shift),
        ("P", "adamw"): list(base),
        ("P", "sgd"): list(base + 8),
    }
    row = _gap_row(claims_table(frame(errors)))
    assert row.test == "within ±2" and row.verdict == verdict, (row.low, row.high)
    if verdict == "reproduced":
        assert -2 < row.low and row.high < 2
    # ViT_P's gap stays a one-sided claim
    assert _gap_row(claims_table(frame(errors)), "ViT_P-fmnist_tiny").test == "> 0"
    assert _gap_row(claims_table(frame(errors), margin=0.01)).verdict in ("contradicted", "inconclusive")


def test_diverged_runs_are_counted_and_a_verdict_resting_on_them_is_noted():
    rng = np.random.default_rng(2)
    good = list(20 + rng.normal(0, 0.5, 12))
    errors = {
        ("C", "adamw"): good,
        ("C", "sgd"): good[:8] + [100] * 4,
        ("P", "adamw"): good,
        ("P", "sgd"): list(np.array(good) + 6),
    }
    t = claims_table(frame(errors))
    row = _gap_row(t)
    assert row.diverged == 4 and row.n == "24/24"
    # a third of ViT_C's SGD runs at 100% drag the median gap's interval past the margin; without
    # them SGD equals AdamW: the verdict rests on the diverged runs, and the note says so
    assert row.verdict == "inconclusive" and row.verdict_without_diverged == "reproduced"
    assert "rests on 4 diverged run(s)" in row.note and "without them: reproduced" in row.note
    tied = t[t.verdict != t.verdict_without_diverged]
    assert all("rests on" in note for note in tied.note)
    assert (t.loc[t.diverged == 0, "verdict"] == t.loc[t.diverged == 0, "verdict_without_diverged"]).all()
    clean = claims_table(frame({k: [e for e in v if e != 100] for k, v in errors.items()}))
    assert (clean.verdict == clean.verdict_without_diverged).all() and (clean.diverged == 0).all()


def test_schedule_loss_of_vit_c_is_an_equivalence_claim():
    rng = np.random.default_rng(4)
    short = frame(
        {("C", o): list(20.5 + rng.normal(0, 0.3, 12)) for o in ("adamw", "sgd")}
        | {("P", o): list(30 + rng.normal(0, 0.3, 12)) for o in ("adamw", "sgd")},
        epochs=2,
    )
    long = frame({(s, o): list(20 + rng.normal(0, 0.3, 12)) for s in "PC" for o in ("adamw", "sgd")}, epochs=8)
    t = claims_table(pd.concat([short, long], ignore_index=True))
    loss = t[t.claim == "schedule_loss"].set_index(["subject", "optimizer"])
    assert loss.loc[("ViT_C-fmnist_tiny", "sgd"), "test"] == "within ±2"
    assert loss.loc[("ViT_C-fmnist_tiny", "sgd"), "verdict"] == "reproduced"
    assert loss.loc[("ViT_P-fmnist_tiny", "sgd"), "test"] == "> 0"
    assert loss.loc[("ViT_P-fmnist_tiny", "sgd"), "verdict"] == "reproduced"
