"""Run a notebook in a real JupyterLab, in headless Chromium, and report what rendered.

`run_notebook_in_jupyterlab` starts a private JupyterLab server on the project's Python, opens a
copy of the notebook with the left sidebar closed and the notebook NOTEBOOK_WIDTH pixels wide, runs
all cells, and returns counts of rendered plots and widgets together with any error output; an
`interact(page)` callback can then drive the page further (`run_cells`, `cell_output`). The
screenshot shows the whole notebook. Chromium comes from the system (scripts/install_browser.sh).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import Page, sync_playwright

from tests.fixtures_notebooks import ensure_kernel, jupyter_env, project_python

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]
# Lab settings for a quiet, read-only run: no autosave, no news or update checks. NO_WINDOWING
# keeps every cell in the DOM, so counts and the screenshot cover the whole notebook; without it
# JupyterLab windows the notebook as it does by default (cells far off screen are detached).
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
NO_WINDOWING = {"@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"}}
WIDGETS = ".jupyter-widgets"
PLOTS = ".js-plotly-plot"
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
# A widget output (ipywidgets or anywidget) is a Lumino panel holding the widget's view.
WIDGET_OUTPUT = ".jp-OutputArea-output.lm-Panel"
STDOUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stdout"]'
NOTEBOOK_WIDTH = 1000  # px of the notebook panel in screenshots: the width figures must fit

# True once the notebook has a kernel (not "No Kernel") and that kernel is idle.
_KERNEL_READY = """() => {
  const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
  const name = document.querySelector('.jp-Toolbar-kernelName');
  return status?.dataset.status === 'idle' && !!name && name.textContent.trim() !== 'No Kernel';
}"""
# True once the kernel is idle and every code cell shows an execution count ("[3]:"), or a cell
# has failed (Run All stops there) and no cell is still queued or running ("[*]:").
_RUN_FINISHED = """() => {
  const status = document.querySelector('.jp-Notebook-ExecutionIndicator');
  const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
    .map(p => p.textContent.trim());
  if (status?.dataset.status !== 'idle' || prompts.length === 0) return false;
  if (prompts.every(t => /^\\[\\d+\\]:$/.test(t))) return true;
  const stderr = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]';
  return document.querySelector(stderr) !== null && !prompts.includes('[*]:');
}"""
_EXECUTED = """() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]
  .filter(p => /^\\[\\d+\\]:$/.test(p.textContent.trim())).length"""
# Counts that tell when rendering has settled: plots, widgets, and widget outputs still empty.
_RENDER_STATE = f"""() => [
  document.querySelectorAll('{PLOTS}').length,
  document.querySelectorAll('{WIDGETS}').length,
  document.querySelectorAll('{WIDGET_OUTPUT}:empty').length,
]"""


def free_port() -> int:
    """Returns a TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_lab_settings(settings_dir: Path, windowing: bool = False) -> None:
    """Writes LAB_SETTINGS (and NO_WINDOWING unless `windowing`) as user settings files under `settings_dir`."""
    for plugin, values in {**LAB_SETTINGS, **({} if windowing else NO_WINDOWING)}.items():
        package, name = plugin.rsplit("/", 1)
        target = settings_dir / package / f"{name}.jupyterlab-settings"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(values))


def start_jupyterlab(root: Path, home: Path, port: int, token: str, windowing: bool = False) -> subprocess.Popen:
    """Starts `jupyter lab` on the project's Python serving `root`; config, settings, workspaces
    and runtime files live under `home`; `windowing`: JupyterLab's default cell windowing.
    Returns the server process (in its own process group)."""
    python = project_python()
    ensure_kernel(python)
    env = jupyter_env(python)
    for var, sub in [
        ("JUPYTER_CONFIG_DIR", "config"),
        ("JUPYTER_DATA_DIR", "data"),
        ("JUPYTER_RUNTIME_DIR", "runtime"),
        ("JUPYTERLAB_SETTINGS_DIR", "settings"),
        ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
    ]:
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    _write_lab_settings(home / "settings", windowing)
    cmd = [
        str(python),
        "-m",
        "jupyterlab",
        "--no-browser",
        "--allow-root",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--ServerApp.token={token}",
        f"--ServerApp.root_dir={root}",
        "--ServerApp.port_retries=0",
        "--LabApp.news_url=None",
        "--LabApp.expose_app_in_browser=True",
    ]  # window.jupyterapp: the tests run single cells through it
    with open(home / "server.log", "wb") as log:  # the server keeps its own handle
        return subprocess.Popen(
            cmd,
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_until_answers(server: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    """Returns once GET `url` answers 200; raises RuntimeError with the server log if the
    server exits or `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {server.returncode}:\n{_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"jupyter lab did not answer within {timeout:.0f} s:\n{_tail(log)}")


def stop_server(server: subprocess.Popen) -> None:
    """Stops the server (SIGTERM: it shuts its kernels down), then kills whatever is left in
    its process group."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _tail(log: Path, n: int = 40) -> str:
    """Returns the last `n` lines of `log`."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no server log)"


def _accept_dialogs(page: Page, seen: list[str]) -> None:
    """Accepts any open dialog (JupyterLab asks "Select Kernel" on a first open) and records
    its title in `seen`."""
    for dialog in page.locator(".jp-Dialog").all():
        title = dialog.locator(".jp-Dialog-header").inner_text().strip()
        dialog.locator(".jp-Dialog-button.jp-mod-accept").first.click()
        seen.append(title)


def _wait_until(page: Page, condition: str, timeout: float, what: str, dialogs: list[str]) -> None:
    """Returns once the JS `condition` holds, accepting dialogs meanwhile; raises TimeoutError
    naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _accept_dialogs(page, dialogs)
        if page.evaluate(condition):
            return
        page.wait_for_timeout(250)
    raise TimeoutError(f"{what} within {timeout:.0f} s")


def _run_all_cells(page: Page) -> None:
    """Runs every cell through the Run menu."""
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()


def _wait_for_render(page: Page, timeout: float, settle: float = 1.5) -> None:
    """Returns when every widget output has content and the plot and widget counts have not
    changed for `settle` seconds (or when `timeout` seconds have passed)."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        state = page.evaluate(_RENDER_STATE)
        if state != last:
            last, since = state, time.monotonic()
        elif state[2] == 0 and time.monotonic() - since >= settle:
            return
        page.wait_for_timeout(250)


_SCROLLERS = "'.jp-NotebookPanel .jp-WindowedPanel-outer, .jp-NotebookPanel-notebook'"


def _fit_notebook_width(page: Page, width: int = NOTEBOOK_WIDTH) -> None:
    """Closes the left sidebar and sizes the viewport so that the notebook panel is `width` px wide."""
    page.evaluate("() => window.jupyterapp.shell.collapseLeft()")
    page.wait_for_timeout(300)
    have = page.evaluate("() => document.querySelector('.jp-NotebookPanel').getBoundingClientRect().width")
    size = page.viewport_size or {"width": 1400, "height": 900}
    page.set_viewport_size({"width": int(size["width"] + width - have), "height": size["height"]})
    page.wait_for_timeout(300)


def _screenshot(page: Page, path: Path) -> None:
    """Saves a PNG of the whole notebook: grows the viewport until the notebook needs no scrolling
    (it scrolls inside its own panel, which full_page alone does not unroll), scrolls it to the top,
    and restores the viewport afterwards."""
    size = page.viewport_size or {"width": 1400, "height": 900}
    height = page.evaluate(f"""() => Math.max(0, ...[...document.querySelectorAll({_SCROLLERS})]
      .map(el => el.scrollHeight - el.clientHeight))""")
    page.set_viewport_size({"width": size["width"], "height": int(min(size["height"] + height + 40, 16000))})
    page.wait_for_timeout(800)
    page.evaluate(f"() => document.querySelectorAll({_SCROLLERS}).forEach(el => el.scrollTop = 0)")
    page.wait_for_timeout(300)
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def _collect(page: Page) -> dict:
    """Returns what the notebook page shows (see run_notebook_in_jupyterlab)."""
    widget_texts = page.locator(WIDGET_OUTPUT).all_inner_texts()
    return {
        "plots": page.locator(PLOTS).count(),
        "widgets": page.locator(WIDGETS).count(),
        "sliders": page.locator(".widget-slider").count(),
        "widget_outputs": page.locator(f"{WIDGET_OUTPUT} > .lm-Widget").count(),
        "cells": page.locator(".jp-Notebook .jp-CodeCell").count(),
        "executed": page.evaluate(_EXECUTED),
        "errors": [t.strip() for t in page.locator(STDERR).all_inner_texts()]
        + [t.strip() for t in widget_texts if "Error displaying widget" in t],
        "stdout": [t.strip() for t in page.locator(STDOUT).all_inner_texts()],
    }


def _open_and_run(page: Page, url: str, timeout: float, dialogs: list[str], run_all: bool = True) -> None:
    """Opens the notebook at `url`, waits for its kernel, runs all cells (unless not `run_all`)
    and waits until they have finished and their outputs have rendered."""
    page.goto(url, timeout=timeout * 1000)  # a busy machine serves the first page slowly
    page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=timeout * 1000)
    _fit_notebook_width(page)
    _wait_until(page, _KERNEL_READY, timeout, "no idle kernel", dialogs)
    if not run_all:
        return
    _run_all_cells(page)
    _wait_until(page, _RUN_FINISHED, timeout, "cells not finished", dialogs)
    _wait_for_render(page, timeout=60)


def run_cells(page: Page, index: int, below: bool = False) -> None:
    """Runs the notebook's cell `index` (counting every cell from 0), or it and all below it,
    as the Run menu does; returns without waiting for them to finish."""
    page.evaluate(
        """([i, below]) => {
      const nb = window.jupyterapp.shell.currentWidget.content;
      nb.activeCellIndex = i;
      return window.jupyterapp.commands.execute(below ? 'notebook:run-all-below' : 'notebook:run-cell');
    }""",
        [index, below],
    )


def cell_state(page: Page, index: int) -> tuple[str, str]:
    """(input prompt such as "[7]:" or "[*]:", text of the outputs) of the notebook's cell `index`."""
    return tuple(
        page.evaluate(
            """(i) => {
      const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[i];
      const prompt = cell.querySelector('.jp-InputPrompt');
      const out = cell.querySelector('.jp-OutputArea');
      return [prompt ? prompt.textContent.trim() : '', out ? out.innerText : ''];
    }""",
            index,
        )
    )


def wait_idle(page: Page, timeout: float) -> None:
    """Returns once every code cell has run and the kernel is idle (see _RUN_FINISHED)."""
    _wait_until(page, _RUN_FINISHED, timeout, "cells not finished", [])
    _wait_for_render(page, timeout=60)


def run_notebook_in_jupyterlab(
    notebook_path: str | Path,
    screenshot_path: str | Path,
    timeout: float = 180,
    interact=None,
    windowing: bool = False,
    run_all: bool = True,
) -> dict:
    """Opens a temporary copy of `notebook_path` in JupyterLab in headless Chromium, runs all
    cells, waits for the kernel and the rendering, and saves a full-page screenshot.

    Returns a dict: "plots" (.js-plotly-plot elements), "widgets" (ipywidgets elements,
    .jupyter-widgets), "sliders" (.widget-slider elements), "widget_outputs" (widget outputs
    that drew a view, anywidget ones such as FigureWidget included), "cells" (code cells),
    "executed" (code cells with an execution count), "errors" (texts of stderr and traceback
    outputs, and of widgets that failed to display), "stdout" (texts of stdout outputs),
    "console_errors" (browser console errors), "dialogs" (titles of dialogs accepted),
    "seconds" (wall time, start to end).
    With `interact`, `interact(page)` runs once the cells have finished, before the screenshot;
    what it returns is under "interaction". `windowing=True` keeps JupyterLab's default
    windowing (cells far off screen leave the DOM: the counts then cover what is near the view).
    `run_all=False` only opens the notebook and waits for its kernel.
    A failing cell stops the run, as Run All does: its traceback is in "errors" and
    "executed" < "cells". Raises TimeoutError when the kernel or the cells do not finish within
    `timeout` seconds (the screenshot is still saved), RuntimeError when the server does not start.
    """
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} not found: run scripts/install_browser.sh")
    start = time.monotonic()
    notebook_path, screenshot_path = Path(notebook_path), Path(screenshot_path)
    home = Path(tempfile.mkdtemp(prefix="lab-run-"))
    root = home / "root"
    root.mkdir()
    shutil.copy2(notebook_path, root / notebook_path.name)
    port, token = free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}"
    server = start_jupyterlab(root, home, port, token, windowing)
    console_errors: list[str] = []
    dialogs: list[str] = []
    try:
        wait_until_answers(
            server, f"{base}/api/status?token={token}", home / "server.log", 180
        )  # a busy machine starts it slowly
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                str(home / "chromium-profile"),
                executable_path=str(CHROMIUM),
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1400, "height": 900},
            )
            try:
                page = context.new_page()
                page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
                page.on("pageerror", lambda e: console_errors.append(str(e)))
                page.set_default_timeout(30_000)  # single UI steps; waits on the run get `timeout`
                try:
                    _open_and_run(
                        page, f"{base}/lab/tree/{notebook_path.name}?token={token}", timeout, dialogs, run_all
                    )
                    interaction = interact(page) if interact is not None else None
                except BaseException:
                    with contextlib.suppress(Exception):  # keep the picture of what went wrong
                        _screenshot(page, screenshot_path)
                    raise
                _screenshot(page, screenshot_path)
                result = _collect(page)
                result["interaction"] = interaction
            finally:
                context.close()
    finally:
        stop_server(server)
        shutil.rmtree(home, ignore_errors=True)
    result.update(console_errors=console_errors, dialogs=dialogs, seconds=round(time.monotonic() - start, 1))
    return result
