"""The notebook test machinery itself: papermill execution and JupyterLab in headless Chromium."""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

import pytest

from tests.fixtures_notebooks import REPO, NotebookError, execute_notebook, project_python, write_notebook

ARTIFACTS = REPO / "artifacts"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
PLOTLY_JSON = "application/vnd.plotly.v1+json"

PARAMETERS = "steps = 5"
SOURCES = [
    "import sys\nprint(f'prefix={sys.prefix}')\nprint(f'steps={steps}')",
    "import ipywidgets as widgets\nslider = widgets.IntSlider(value=steps, min=0, max=10, description='steps')\nslider",
    "import plotly.graph_objects as go\n"
    "live = go.FigureWidget(go.Scatter(y=[i * i for i in range(steps)], name='live'))\nlive",
    "fig = go.Figure(go.Bar(x=['a', 'b', 'c'], y=[1, 3, 2]))\nfig.show()",
]


def small_notebook(folder: Path) -> Path:
    """Returns a notebook with a parameters cell, a slider, a FigureWidget and a plain figure."""
    return write_notebook(folder / "smoke.ipynb", SOURCES, parameters=PARAMETERS)


def own_prefix() -> str:
    """Returns sys.prefix of the project's Python (what the kernel must run)."""
    return subprocess.run(
        [str(project_python()), "-c", "import sys; print(sys.prefix)"], capture_output=True, text=True, check=True
    ).stdout.strip()


def png_size(path: Path) -> tuple[int, int]:
    """Returns (width, height) from a PNG header."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def outputs(nb) -> list[dict]:
    """Returns every output of every code cell."""
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def test_papermill_runs_parameters_widgets_and_plots(tmp_path, notebook_kernel):
    nb = execute_notebook(small_notebook(tmp_path), {"steps": 7}, cwd=tmp_path)
    text = "".join(out.get("text", "") for out in outputs(nb) if out.output_type == "stream")
    assert "steps=7" in text
    assert f"prefix={own_prefix()}" in text
    mimes = [mime for out in outputs(nb) for mime in out.get("data", {})]
    assert mimes.count(WIDGET_VIEW) == 2  # the slider and the FigureWidget
    assert PLOTLY_JSON in mimes
    assert not [out for out in outputs(nb) if out.output_type == "error"]


def test_failing_cell_is_named(tmp_path, notebook_kernel):
    path = write_notebook(
        tmp_path / "broken.ipynb", ["x = 1", "y = x + 1\nz = y / 0", "print('never')"], parameters="n = 1"
    )
    with pytest.raises(NotebookError) as caught:
        execute_notebook(path, {"n": 2}, cwd=tmp_path)
    message = str(caught.value)
    assert "broken.ipynb" in message
    assert "cell 2 ('y = x + 1')" in message
    assert "ZeroDivisionError: division by zero" in message
    assert "z = y / 0" in caught.value.traceback


@pytest.mark.browser
@pytest.mark.slow
def test_jupyterlab_renders_widgets_and_plots(tmp_path):
    from tests.browser import run_notebook_in_jupyterlab

    shot = ARTIFACTS / "browser_smoke.png"
    shot.unlink(missing_ok=True)
    result = run_notebook_in_jupyterlab(small_notebook(tmp_path), shot)
    assert result["errors"] == []
    assert result["executed"] == result["cells"] == len(SOURCES) + 1
    assert result["plots"] >= 2  # the FigureWidget and the plain figure
    assert result["sliders"] >= 1
    assert result["widgets"] >= 1
    assert result["widget_outputs"] == 2  # the slider and the FigureWidget both drew something
    assert f"prefix={own_prefix()}" in "\n".join(result["stdout"])
    width, height = png_size(shot)
    assert width > 0 and height > 0 and shot.stat().st_size > 10_000


@pytest.mark.browser
@pytest.mark.slow
def test_jupyterlab_reports_a_failing_cell(tmp_path):
    from tests.browser import run_notebook_in_jupyterlab

    path = write_notebook(tmp_path / "broken.ipynb", ["x = 1", "1 / 0", "print('never')"])
    result = run_notebook_in_jupyterlab(path, ARTIFACTS / "browser_failing.png")
    assert any("ZeroDivisionError" in text for text in result["errors"])
    assert result["executed"] < result["cells"]
