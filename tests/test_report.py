"""The HTML report and the demo driver on a real small sweep."""

import re

import pytest

from analysis.report import best_runs, export_png, headline, write_report


def test_headline_on_real_sweep(real_frame):
    table = headline(real_frame)
    assert set(table["model"]) == {"ViT_P-fmnist_tiny", "ViT_C-fmnist_tiny"}
    assert set(table["optimizer"]) == {"adamw", "sgd"}
    assert (table["n"] == 2).all()
    for row in table.itertuples():  # the numbers are the groups' own: best and median of their errors
        errors = real_frame[(real_frame["model"] == row.model) & (real_frame["optimizer"] == row.optimizer)]["error"]
        assert row.best == pytest.approx(errors.min()) and row.median == pytest.approx(errors.median())
    best = best_runs(real_frame)
    assert len(best) == 2 and (best["status"] == "completed").all()


def test_report_is_one_offline_file_with_every_figure(real_sweep, real_frame, tmp_path):
    out = write_report(real_sweep, tmp_path / "report.html")
    page = out.read_text()
    assert not re.search(r"<script[^>]*\bsrc=", page)  # plotly.js inlined: works offline
    # one figure under each heading after the summary: 2 EDFs, sensitivity (lr and wd vary), the
    # optimizer gap, the curves, attention distance and 3 probe figures per model; no epochs figure
    # (one schedule length)
    sections = page.split("<h2>Summary</h2>")[1].split("<h2>")[1:]
    figs = [len(re.findall(r'class="plotly-graph-div"', part)) for part in sections]
    assert figs == [1] * 12 and "Error against training length" not in page
    for heading in (
        "Error EDFs",
        "lr / wd sensitivity",
        "Optimizer gap",
        "Training curves",
        "Mean attention distance",
        "attention rollout",
        "first-layer filters",
    ):
        assert heading in page, heading
    assert "ViT_C-fmnist_tiny" in page and "within_4" in page
    # the claims table comes first, with a verdict for the optimizer gap of each stem
    assert page.index("<table class=claims") < page.index("<h2>Summary</h2>") < page.index("Error EDFs")
    assert "optimizer_gap_difference" in page


@pytest.mark.browser
def test_png_export_through_kaleido(real_frame, tmp_path):
    from analysis.plots.stability import edf_figure

    paths = export_png([edf_figure(real_frame)], tmp_path)
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths[0].stat().st_size > 5000


def test_report_without_the_probes_of_a_run_whose_checkpoint_is_unreadable(real_sweep, tmp_path):
    """A truncated checkpoint of one best run: the report is written, without that run's probes,
    and names the run and why (the folder is a copy: its collect cache must not point back)."""
    import shutil

    from analysis.sweeps import collect

    copy = tmp_path / "copy"
    shutil.copytree(real_sweep, copy)
    best = best_runs(collect(copy)).set_index("model")
    broken = best.loc["ViT_C-fmnist_tiny", "run"]
    assert str(copy) in best.loc["ViT_C-fmnist_tiny", "run_dir"]
    checkpoint = copy / "runs" / broken / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    with pytest.warns(UserWarning, match=broken):
        out = write_report(copy, tmp_path / "report.html")
    page = out.read_text()
    assert "Probes skipped" in page and f"{broken}: " in page
    assert "ViT_P-fmnist_tiny: attention rollout" in page and "ViT_C-fmnist_tiny: attention rollout" not in page
    assert "Error EDFs" in page and "Training curves" in page


def test_a_data_root_planted_in_the_sweep_is_never_read_by_the_report_or_the_explorer(real_sweep, tmp_path):
    """A best run's config naming CIFAR data inside the sweep (batches carrying a payload): the report
    is written without that run's probes and says why; the attention explorer refuses in one line."""
    import shutil

    from analysis import config
    from analysis.errors import ConfigError
    from analysis.sweeps import collect
    from analysis.widgets import AttentionExplorer
    from tests.test_trust import Payload, one_line, write_cifar

    copy = tmp_path / "copy"
    shutil.copytree(real_sweep, copy)
    run = copy / "runs" / best_runs(collect(copy)).set_index("model").loc["ViT_C-fmnist_tiny", "run"]
    marker = tmp_path / "marker"
    write_cifar(copy / "data" / "cifar-10-batches-py", 2, data=Payload(marker))
    cfg = config.load(run / "config.yaml").replace({"data.name": "cifar10", "data.root": str(copy / "data")})
    (run / "config.yaml").write_text(cfg.to_yaml())
    with pytest.warns(UserWarning, match=run.name):
        page = write_report(copy, tmp_path / "report.html").read_text()
    assert "Probes skipped" in page and "lies inside the folder being read" in page
    with pytest.raises(ConfigError) as e:
        AttentionExplorer([run])
    assert "lies inside the folder being read" in one_line(e.value)
    assert not marker.exists()


def test_demo_prints_the_headline_and_the_claims(real_sweep, tmp_path):
    """The demo driver on a finished sweep: nothing to launch; headline, claims table and report."""
    import shutil

    import yaml

    from analysis.demo import run
    from tests.fixtures_real import REAL_SPEC

    shutil.copytree(real_sweep, tmp_path / "sweeps" / real_sweep.name)
    spec = tmp_path / "real_small.yaml"
    spec.write_text(yaml.safe_dump(REAL_SPEC, sort_keys=False))
    lines = []
    report, table = run(spec=spec, root=tmp_path / "sweeps", poll=0.1, echo=lines.append)
    text = "\n".join(lines)
    assert report.is_file() and set(table["model"]) == {"ViT_P-fmnist_tiny", "ViT_C-fmnist_tiny"}
    assert "The paper's claims on this sweep" in text and "verdict" in text
    assert "8 runs; launching" in text and "8 completed" in text
