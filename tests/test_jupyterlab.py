"""The user's view: notebooks opened in a real JupyterLab (headless Chromium), all cells run.

Each notebook gets its tiny test parameters written in (papermill's injected-parameters cell)
and runs on the session's shared runs. A screenshot of every notebook at notebook width
(1,000 px) goes to artifacts/. Notebook 02 launches its sweep on the local SLURM cluster and is
watched while the sweep runs: the monitor's progress must change in the page while the kernel is
free and another cell runs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import nbformat
import pytest
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from tests.test_notebooks import CASES, NOTEBOOKS, SWEEP_SPEC, notebook_root  # noqa: F401 (a fixture)

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


def with_parameters(name: str, folder: Path, root: Path, **changes) -> Path:
    """Write notebooks/<name>.ipynb with its tiny parameters (and `changes`) injected into `folder`;
    return the copy."""
    params, _, _ = CASES[name]
    nb = load_notebook_node(str(NOTEBOOKS / f"{name}.ipynb"))
    nb = parameterize_notebook(nb, dict(params, root=str(root), **changes))
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def cell_index(path: Path, cell_id: str) -> int:
    """Index of the cell with `cell_id` in a notebook file (every cell counted)."""
    return [c.id for c in nbformat.read(path, as_version=4).cells].index(cell_id)


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize(
    "name, min_plots, min_sliders",
    [
        ("01_quickstart", 4, 0),
        ("03_training_length_and_optimizers", 2, 0),
        ("04_attention", 5, 2),
        ("05_filters_and_embeddings", 9, 1),
        ("06_representations", 5, 0),
        ("07_cluster", 2, 0),  # the monitor's curves and EDF (a dry run: empty)
        ("08_see_like_cnns", 6, 0),
        ("09_where_the_stem_matters", 1, 0),  # the forest plot (its tiny regime sweep is shared with test_notebooks)
    ],
)
def test_notebook_renders_in_jupyterlab(name, min_plots, min_sliders, notebook_root, tmp_path):  # noqa: F811
    from tests.browser import run_notebook_in_jupyterlab

    shot = ARTIFACTS / f"notebook_{name}.png"
    shot.unlink(missing_ok=True)
    result = run_notebook_in_jupyterlab(with_parameters(name, tmp_path, notebook_root), shot, timeout=420)
    assert result["errors"] == []
    assert result["executed"] == result["cells"]
    assert result["plots"] >= min_plots
    assert result["sliders"] >= min_sliders
    if min_sliders:
        assert result["widgets"] >= 1
    assert shot.stat().st_size > 20_000


def watch_the_monitor(path: Path, timeout: float = 600):
    """An `interact` for notebook 02: after Run All, follow the monitor while its sweep runs, run
    another cell meanwhile, wait for the sweep to end and run the collect cells again."""
    from tests.browser import cell_state, run_cells, wait_idle

    counts_cell, collect_cell = cell_index(path, "02-16"), cell_index(path, "02-10")

    def monitor_text(page) -> tuple[str, str]:
        header = page.locator(".monitor-progress").first
        return header.inner_text(), header.locator("xpath=..").inner_text()

    def interact(page) -> dict:
        start, seen = time.monotonic(), []  # (seconds, progress text, header text)
        page.locator(".monitor-progress").first.wait_for(timeout=60_000)

        def sample(until, what: str, limit: float):
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                seen.append((round(time.monotonic() - start, 1), *monitor_text(page)))
                if until():
                    return
                page.wait_for_timeout(250)
            raise TimeoutError(f"{what}; monitor texts seen: {[s[1] for s in seen[-5:]]}")

        first = monitor_text(page)[0]
        sample(lambda: seen[-1][1] != first, "the monitor's progress did not change in the page", timeout)
        prompt = cell_state(page, counts_cell)[0]
        run_cells(page, counts_cell)
        sample(
            lambda: (
                cell_state(page, counts_cell)[0] not in (prompt, "[*]:")
                and cell_state(page, counts_cell)[1].strip() != ""
            ),
            "the counts cell did not run",
            60,
        )
        ran_at, output = seen[-1], cell_state(page, counts_cell)[1]
        sample(
            lambda: seen[-1][1] != ran_at[1] or "has ended" in seen[-1][2],
            "the monitor stopped changing after another cell ran",
            timeout,
        )
        sample(lambda: "the sweep has ended" in seen[-1][2], "the sweep did not end", timeout)
        run_cells(page, collect_cell, below=True)
        page.wait_for_timeout(1000)
        wait_idle(page, timeout)
        stamps = sorted({m[0] for s in seen if (m := re.findall(r"last (\d\d:\d\d:\d\d)", s[2]))})
        return {
            "samples": seen,
            "counts_cell_output": output,
            "counts_cell_ran_at": ran_at,
            "progress_texts": list(dict.fromkeys(s[1] for s in seen)),
            "refresh_stamps": stamps,
        }

    return interact


@pytest.mark.browser
@pytest.mark.slurm
@pytest.mark.slow
def test_notebook_02_monitors_a_slurm_sweep_in_jupyterlab(notebook_root, slurm_cluster, tmp_path):  # noqa: F811
    from tests.browser import run_notebook_in_jupyterlab

    spec = {
        **SWEEP_SPEC,
        "name": "nb_monitor_slurm",
        "base": {
            **SWEEP_SPEC["base"],
            "data": {"train_per_class": 20, "test_per_class": 10},
            "train": {**SWEEP_SPEC["base"]["train"], "epochs": 3, "threads": 1},
        },
        "launch": {"cluster": "slurm", "partition": slurm_cluster.partition, "cpus_per_task": 1, "timeout_min": 10},
    }
    path = with_parameters("02_stability_sweeps", tmp_path, notebook_root, spec=spec, cluster="slurm", wait=False)
    shot = ARTIFACTS / "notebook_02_stability_sweeps.png"
    shot.unlink(missing_ok=True)
    result = run_notebook_in_jupyterlab(path, shot, timeout=600, interact=watch_the_monitor(path))
    seen = result["interaction"]
    (ARTIFACTS / "notebook_02_monitor.json").write_text(json.dumps(seen, indent=1))  # what the page showed, when
    assert result["errors"] == [] and result["executed"] == result["cells"]
    # Run All had finished (the kernel idle) before the progress changed: the kernel stayed free
    assert len(seen["progress_texts"]) >= 3, seen["progress_texts"]
    assert "{" in seen["counts_cell_output"]  # the state counts
    assert "refreshing every" in seen["counts_cell_ran_at"][2]  # the other cell ran while it refreshed
    assert seen["progress_texts"][-1] == "epochs 12/12"
    assert len(seen["refresh_stamps"]) >= 5  # the page saw the refreshes one by one
    assert result["plots"] >= 6  # monitor curves and EDF, two EDF cells, the explorer's two figures
    assert shot.stat().st_size > 20_000


# The monitor's plots in its cell: per plot, [markers drawn, lines with a path] of its scatter traces.
_MONITOR_POINTS = """() => {
  const cell = document.querySelector('.monitor-progress')?.closest('.jp-Cell');
  if (!cell) return null;
  return [...cell.querySelectorAll('.js-plotly-plot')].map(p => [
    p.querySelectorAll('.scatterlayer .trace .point').length,
    [...p.querySelectorAll('.scatterlayer .trace path.js-line')].filter(l => (l.getAttribute('d') || '').length > 2).length,
  ]);
}"""


def monitor_notebook(root: Path, folder: Path) -> Path:
    """A notebook that launches a short local sweep under `root` and shows its monitor, followed by
    enough tall cells that scrolling to the end takes the monitor out of view."""
    spec = {
        "name": "lab_live",
        "grid": {"preset": ["vit_p_fmnist_tiny", "vit_c_fmnist_tiny"], "optim.name": ["adamw", "sgd"]},
        "samples": 1,
        "base": {
            "data": {"train_per_class": 30, "test_per_class": 10},
            "train": {"epochs": 4, "batch_size": 50, "precision": "fp32", "threads": 1, "checkpoint_minutes": 0},
        },
        "launch": {"cluster": "local", "parallel": 2},
    }
    code = (
        f"from analysis.sweeps import Sweep\nsweep = Sweep.from_dict({spec!r}, root={str(root)!r})\n"
        "sweep.launch()\nmonitor = sweep.monitor(interval=1)\ndisplay(monitor)"
    )
    filler = "\n\n".join(f"Filler paragraph {i}: text that keeps the monitor far above." for i in range(12))
    cells = [nbformat.v4.new_code_cell(code)]
    cells += [nbformat.v4.new_markdown_cell(f"## Section {i}\n\n{filler}") for i in range(12)]
    cells.append(nbformat.v4.new_code_cell("print('end of notebook')"))
    path = folder / "live_monitor.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    return path


@pytest.mark.browser
@pytest.mark.slow
def test_monitor_draws_live_curves_with_default_windowing(tmp_path):
    """JupyterLab with its default cell windowing: the monitor's curves and EDF have points on the
    page while the sweep runs, and again after the notebook is scrolled away and back."""
    from tests.browser import _SCROLLERS, run_notebook_in_jupyterlab

    scroll = f"(top) => document.querySelectorAll({_SCROLLERS}).forEach(el => el.scrollTop = top ? 0 : el.scrollHeight)"
    shots = {k: ARTIFACTS / f"monitor_windowed_{k}.png" for k in ("live", "scrolled_back")}

    def interact(page) -> dict:
        page.evaluate(scroll, True)  # Run All left the last cell in view
        page.locator(".monitor-progress").first.wait_for(timeout=60_000)
        seen, deadline = [], time.monotonic() + 420
        cell = page.locator(".jp-Cell").filter(has=page.locator(".monitor-progress"))

        def header() -> str:  # textContent: innerText is empty for cells the windowing skips
            return page.locator(".monitor-progress").first.locator("xpath=..").text_content()

        while time.monotonic() < deadline:  # until both figures have points while it refreshes
            points = page.evaluate(_MONITOR_POINTS)
            seen.append((header(), points))
            if "refreshing every" in seen[-1][0] and points and len(points) == 2 and min(sum(p) for p in points):
                break
            page.wait_for_timeout(500)
        live = seen[-1]
        ARTIFACTS.mkdir(exist_ok=True)
        cell.screenshot(path=str(shots["live"]))
        page.evaluate(scroll, False)
        page.wait_for_timeout(3000)
        away = page.evaluate(_MONITOR_POINTS)
        page.evaluate(scroll, True)
        page.locator(".monitor-progress").first.wait_for(timeout=30_000)
        page.wait_for_timeout(3000)
        back = page.evaluate(_MONITOR_POINTS)
        cell.screenshot(path=str(shots["scrolled_back"]))
        return {"live": live, "away": away, "back": back, "seen": seen[-5:]}

    path = monitor_notebook(tmp_path / "sweeps", tmp_path)
    result = run_notebook_in_jupyterlab(
        path, ARTIFACTS / "monitor_windowed_end.png", timeout=600, interact=interact, windowing=True
    )
    seen = result["interaction"]
    assert result["errors"] == [], result["errors"]
    header, points = seen["live"]
    assert "refreshing every" in header, seen["seen"]  # caught while the sweep ran
    assert len(points) == 2 and points[0][0] > 0 and sum(points[1]) > 0, seen["seen"]  # curves' markers, EDF
    # scrolled away, windowing may take the monitor's cell out of the page (away is None) or keep it
    # rendered (a short notebook); either way the monitor must draw its points again once back in view
    assert len(seen["back"]) == 2 and seen["back"][0][0] >= points[0][0] and sum(seen["back"][1]) > 0, seen
    assert all(shot.stat().st_size > 20_000 for shot in shots.values())


@pytest.mark.browser
@pytest.mark.slow
@pytest.mark.parametrize("name", ["02_stability_sweeps", "08_see_like_cnns"])
def test_notebook_opens_unmodified(name):
    """Opening a committed notebook in JupyterLab (default settings) and starting its kernel leaves it
    unmodified: its metadata, widget state and nbformat version are those JupyterLab would write."""
    from tests.browser import run_notebook_in_jupyterlab

    def interact(page) -> bool:
        page.wait_for_timeout(3000)
        return page.evaluate("() => window.jupyterapp.shell.currentWidget.context.model.dirty")

    result = run_notebook_in_jupyterlab(
        NOTEBOOKS / f"{name}.ipynb", ARTIFACTS / f"opened_{name}.png", interact=interact, windowing=True, run_all=False
    )
    assert result["interaction"] is False
