"""Notebook 05's edit widget in a real browser: JupyterLab + Debian's Chromium driven by Playwright.

The test starts JupyterLab on localhost (a free port, a token, no browser of its own) in a temporary
folder holding a copy of notebook 05 reduced to the cells tagged ``browser`` (the setup cell, the
model switch and the edit widget) with 4 sampling steps, so that "Run All Cells" takes seconds, not
the whole notebook's minute. It opens the notebook in headless Chromium (the system browser, no
``playwright install``), runs all cells, drags the cross tau slider and checks that the edit was
redrawn: the screenshot changed and the figure shown is titled with the slider's new value.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; see ``.ci/browser_deps.sh``) and the
``playwright`` Python package; skipped, saying which is missing, without them.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "05_prompt_to_prompt.ipynb"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BROWSER_STEPS = 4

try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(not os.path.exists(CHROMIUM),
                       reason=f"{CHROMIUM} not found: install Debian's chromium (.ci/browser_deps.sh)"),
    pytest.mark.skipif(sync_playwright is None,
                       reason="the playwright Python package is not installed (pip install playwright)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser_notebook(folder: Path) -> Path:
    """A copy of notebook 05 with only its ``browser`` cells, sampling with few steps."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    cells = [c for c in nb.cells if "browser" in c.metadata.get("tags", [])]
    assert len(cells) >= 3, "notebook 05 must tag its setup, model and widget cells 'browser'"
    # the widget reuses section 1's source run (``base``), which the reduced copy samples here, at few steps
    fast = nbformat.v4.new_code_cell(f"STEPS = {BROWSER_STEPS}\nRUN = dict(seed=SEED, num_inference_steps=STEPS)\n"
                                     "base = p2p.edit(pipe, SOURCE, SWAPS, **RUN)")
    nb.cells = cells[:2] + [fast] + cells[2:]
    for c in nb.cells:
        c.outputs, c.execution_count = [], None
    path = folder / "p2p_browser.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def jupyter_lab(tmp_path):
    nb = _browser_notebook(tmp_path)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
           f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.port_retries=0",
           "--LabApp.news_url=", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_server(url, token, proc, tmp_path / "lab.log")
        yield url, token, nb.name, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _wait_for_server(url, token, proc, log_path, timeout=120.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"JupyterLab exited early:\n{Path(log_path).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"JupyterLab did not answer within {timeout} s:\n{Path(log_path).read_text()[-3000:]}")


def _run_all_cells(page, tries: int = 3):
    """Run > Run All Cells, retried until a cell prompt shows that execution started.

    On a fast machine the first click can land before the notebook panel has focus, and then
    nothing runs; a user would click again, and so does the test.
    """
    started = page.locator(".jp-InputArea-prompt", has_text=re.compile(r"\[(\*|\d+)\]"))
    for _ in range(tries):
        page.locator(".jp-Notebook .jp-Cell").first.click()
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            started.first.wait_for(timeout=30_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; try again
            page.keyboard.press("Escape")
    pytest.fail("Run All Cells did not start any cell")


def _tau_slider(page):
    return page.locator(".widget-slider", has=page.locator(".widget-label", has_text="cross tau")).first


def _drag(page, slider, fraction: float) -> None:
    """Drag the slider's handle to ``fraction`` of its track, like a user with a mouse."""
    track = slider.locator(".noUi-target, .slider-container").first.bounding_box()
    handle = slider.locator(".noUi-handle").first.bounding_box()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(track["x"] + fraction * track["width"], handle["y"] + handle["height"] / 2, steps=8)
    page.mouse.up()


def test_tau_slider_redraws_the_edit_in_chromium(jupyter_lab):
    url, token, name, folder = jupyter_lab
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(120_000)  # generous: CI machines may be busy
            page.goto(f"{url}/lab/tree/{name}?token={token}", wait_until="commit")
            page.locator(".jp-Notebook").first.wait_for(timeout=180_000)
            page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']").first.wait_for(
                state="attached", timeout=60_000)
            _run_all_cells(page)
            status = page.locator(".p2p-status").first
            status.wait_for(timeout=420_000)
            assert "cross tau=0.80" in status.inner_text()
            figure = page.locator("img[alt^='P2P edit:']").first
            figure.scroll_into_view_if_needed()
            before = figure.screenshot()
            assert "cross tau=0.80" in figure.get_attribute("alt")

            slider = _tau_slider(page)
            slider.scroll_into_view_if_needed()
            _drag(page, slider, 0.3)
            new = slider.locator(".widget-readout").first.inner_text().strip()
            assert new != "0.80", "dragging the handle did not move the slider"
            expected = f"cross tau={float(new):.2f}"
            page.locator(".p2p-status", has_text=expected).first.wait_for(timeout=120_000)
            figure = page.locator("img[alt^='P2P edit:']").first
            assert expected in figure.get_attribute("alt")  # the figure shown is the new tau's
            after = figure.screenshot()
            assert after != before, "the rendered edit did not change after moving tau"
            page.screenshot(path=str(folder / "after.png"))
        except Exception:
            page.screenshot(path=str(folder / "failure.png"), full_page=True)
            print(f"browser screenshot at failure: {folder / 'failure.png'}")
            raise
        finally:
            browser.close()
