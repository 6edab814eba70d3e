"""The course's static site (``python -m p2p_lab site OUT``): built once per test session from the six
notebooks executed on the shipped model, then read as a reader would, in Chromium with the network
cut off (every request not to a file of the site is aborted and recorded).

The build reuses executed notebooks from ``P2P_LAB_SITE_CACHE`` (default: the command's own cache,
``~/.cache/p2p_lab/site``) while the notebooks, the package and the model are unchanged; a cold
build takes minutes. The browser checks need Debian's Chromium (``.ci/browser_deps.sh``) and the
``playwright`` package, and are skipped, saying which is missing, without them.
"""
from __future__ import annotations

import html.parser
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

for _module in ("sphinx", "myst_nb", "furo", "jupyter_server_mathjax"):
    pytest.importorskip(_module, reason=f"the site extra is not installed ({_module}): pip install -e '.[site]'")

from p2p_lab import colab_url  # noqa: E402
from p2p_lab.__main__ import main  # noqa: E402
from p2p_lab.grading import BEGIN, END, student_notebook  # noqa: E402
from p2p_lab.site import MARKER, SiteError, build_site, check_out_dir, leaks  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CHROMIUM = "/usr/bin/chromium"
CACHE = os.environ.get("P2P_LAB_SITE_CACHE")
BUILD_TIMEOUT_S = 1800  # a cold build takes about 10 minutes on 2 busy cores


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """(folder, the command's printed report): the real course, built once through the CLI; or,
    with ``P2P_LAB_SITE_BUILT=FOLDER``, a site the command built there before (its report is
    read from the folder's marker file, the size measured afresh)."""
    built = os.environ.get("P2P_LAB_SITE_BUILT")
    if built:
        out = Path(built)
        size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        return out, (out / MARKER).read_text() + f"\n  site size: {size / 1e6:.1f} MB\n"
    out = tmp_path_factory.mktemp("site") / "course"
    args = ["site", str(out)] + (["--cache", CACHE] if CACHE else [])
    # The build runs as the command a course runs, in its own process: the notebooks' kernels then
    # meet no event loop or ZMQ state left by earlier tests (inside a long pytest session one
    # kernel's reply was lost and the build waited forever), and a hang is cut off.
    # A cell of these notebooks takes at most about a minute; a kernel whose reply was lost (seen twice
    # on a machine loaded by other jobs, never on a quiet one) is cut off after --timeout and the build
    # is run once more, reusing the notebooks it had executed.
    cmd = [sys.executable, "-m", "p2p_lab", *args, "--timeout", "400"]
    for attempt in (1, 2):
        run = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        if run.returncode == 0 or "timed out" not in (run.stdout + run.stderr).lower() or attempt == 2:
            break
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return out, run.stdout


# --------------------------------------------------------------------------- independent readers

class _Text(html.parser.HTMLParser):
    """A page's visible text and its links and images, read with the standard library's parser."""

    def __init__(self):
        super().__init__()
        self.parts, self.links, self.images, self._skip = [], [], [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "img":
            self.images.append(a.get("src", ""))

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data):
        if not self._skip:
            self.parts.append(data)


def _read(path: Path) -> _Text:
    reader = _Text()
    reader.feed(path.read_text())
    return reader


def _master_solution_lines() -> set[str]:
    """Lines between the solution markers of the masters, at least 24 characters, comments aside
    (the release's own leak rule, tests/test_grading.py), less those the released student
    notebook shows anyway (a solution may repeat a line of the text, as 04's loop does)."""
    lines, public = set(), []
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            inside = False
            for line in cell.source.split("\n"):
                if line.strip() in (BEGIN, END):
                    inside = line.strip() == BEGIN
                elif inside and len(line.strip()) >= 24 and not line.strip().startswith("#"):
                    lines.add(line.strip())
        public += [c.source for c in student_notebook(nb).cells]
    return {line for line in lines if line not in "\n".join(public)}


# --------------------------------------------------------------------------- the built site

def test_a_page_per_notebook_and_a_landing_page(site):
    out, printed = site
    assert (out / "index.html").exists() and (out / MARKER).exists()
    landing = _read(out / "index.html")
    text = " ".join(landing.parts)
    for path in NOTEBOOKS:
        page = out / f"{path.stem}.html"
        assert page.exists(), f"no page for {path.name}"
        assert f"{path.stem}.html" in landing.links, f"the landing page does not link {path.stem}.html"
        nb = nbformat.read(path, as_version=4)
        title = nb.cells[0].source.splitlines()[0].lstrip("# ").strip()
        assert title in text, f"the course map lacks {title!r}"
        when = re.search(r"\*\*Time:\*\*\s*about (\d+) minutes", nb.cells[0].source + nb.cells[1].source)
        if when:
            assert f"about {when.group(1)} minutes" in text, f"the course map lacks {path.stem}'s time"
        reader = _read(page)
        assert colab_url(path.name) in reader.links, f"{page.name} has no Open in Colab link"
        assert not [s for s in reader.images if s.startswith(("http:", "https:", "//"))], page.name
        assert "Further reading" in " ".join(reader.parts)
    assert "Further reading" in text
    assert "arxiv.org/abs/2208.01626" in " ".join(landing.links)  # the paper of notebook 05


def test_figures_are_on_the_pages(site):
    out, _ = site
    from PIL import Image

    for path in NOTEBOOKS:
        images = [s for s in _read(out / f"{path.stem}.html").images if s.endswith(".png")]
        assert images, f"{path.stem}.html shows no figure"
        for src in images:
            with Image.open(out / src) as img:  # a real picture, not an empty file
                assert img.width > 50 and img.height > 50, (path.stem, src, img.size)


def test_explorers_replace_the_widgets(site):
    out, _ = site
    page = (out / "05_prompt_to_prompt.html").read_text()
    assert page.count('class="p2p-explorer"') >= 2  # the attention explorer and the edit explorer
    for label in ("cross tau", "self tau", "tau[", "re-weight"):
        assert label in page, f"05's explorer has no {label!r} control"
    assert 'class="p2p-explorer"' in (out / "03_ddpm.html").read_text()
    assert "inversion" in (out / "06_real_images.html").read_text().split('class="p2p-explorer"', 1)[-1]
    for name in ("03_ddpm", "05_prompt_to_prompt", "06_real_images"):
        text = (out / f"{name}.html").read_text()
        assert "application/vnd.jupyter.widget-view" not in text and "VBox(" not in text, name


def test_no_solution_code_on_the_site(site):
    out, _ = site
    lines = _master_solution_lines()
    assert len(lines) > 40
    for path in sorted(out.rglob("*")):
        if path.suffix in (".html", ".js", ".txt", ".json", ".ipynb") and "mathjax" not in path.parts:
            raw = path.read_text(errors="replace")
            text = raw if path.suffix != ".html" else " ".join(_read(path).parts) + raw
            found = [line for line in lines if line in text]
            assert not found, (str(path.relative_to(out)), found[:3])
    assert not list(out.rglob("*.ipynb")), "a notebook file (with its sources) was published"
    page = " ".join(_read(out / "05_prompt_to_prompt.html").parts)
    assert "write your solution here" in page  # the student's stubs stand in for the solutions


def test_the_build_reports_its_time_and_size(site):
    out, printed = site
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    reported = re.search(r"site size: ([\d.]+) MB", printed)
    assert reported and abs(float(reported.group(1)) - size / 1e6) < 0.1, printed
    assert size < 50e6, f"the site is {size / 1e6:.1f} MB, over the 50 MB budget"
    assert re.search(r"build time: \d+ s", printed), printed


def test_the_leak_scan_finds_a_solution_line_inside_highlighted_code(tmp_path):
    line = "scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)"
    highlighted = ('<pre><span class="n">scores</span> <span class="o">=</span> <span class="n">q</span> '
                   '<span class="o">@</span> <span class="n">k</span><span class="o">.</span>'
                   '<span class="n">transpose</span><span class="p">(</span><span class="o">-</span>'
                   '<span class="mi">2</span><span class="p">,</span> <span class="o">-</span>'
                   '<span class="mi">1</span><span class="p">)</span> <span class="o">/</span> '
                   '<span class="n">math</span><span class="o">.</span><span class="n">sqrt</span>'
                   '<span class="p">(</span><span class="n">d_k</span><span class="p">)</span></pre>')
    (tmp_path / "page.html").write_text(highlighted)
    assert leaks(tmp_path, {line}) == [f"page.html: {line}"]
    (tmp_path / "page.html").write_text(highlighted.replace("d_k", "d_model"))
    assert leaks(tmp_path, {line}) == []


# --------------------------------------------------------------------------- bad input

def test_refuses_a_folder_that_is_not_a_site(tmp_path, capsys):
    folder = tmp_path / "my documents"
    folder.mkdir()
    (folder / "thesis.tex").write_text("keep me")
    with pytest.raises(SiteError, match=re.escape(str(folder))):
        check_out_dir(folder)
    assert main(["site", str(folder)]) == 2
    err = capsys.readouterr().err
    assert str(folder) in err and "empty" in err
    assert (folder / "thesis.tex").read_text() == "keep me"
    (folder / "thesis.tex").unlink()
    (folder / MARKER).write_text("")
    (folder / "index.html").write_text("an old build")
    check_out_dir(folder)  # a previous site may be rebuilt in place


def _tiny(folder: Path, cells: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 01 · Tiny\n\n**What you will learn**\n\n- nothing much\n\n"
                                              "**Time:** about 1 minute.\n\n$a^2 + b^2 = c^2$")]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "01_tiny.ipynb")
    return folder


def test_a_failing_notebook_stops_the_build_naming_it_and_the_cell(tmp_path):
    notebooks = _tiny(tmp_path / "notebooks", ["x = 1", "print(x)", "1 / 0", "print('never')"])
    out = tmp_path / "site"
    with pytest.raises(SiteError) as err:
        build_site(out, notebooks, cache_dir=None)
    assert "01_tiny.ipynb, cell 3 (`1 / 0`)" in str(err.value) and "ZeroDivisionError" in str(err.value)
    assert not out.exists() or not any(out.iterdir())


def test_a_site_is_rebuilt_in_place_reusing_the_executed_notebook(tmp_path):
    notebooks = _tiny(tmp_path / "notebooks", ["x = 6 * 7", "print('the answer is', x)"])
    out, cache = tmp_path / "site", tmp_path / "cache"
    first = build_site(out, notebooks, cache_dir=cache)
    (out / "stale.html").write_text("from an older build")
    second = build_site(out, notebooks, cache_dir=cache)
    assert first.execute_seconds["01_tiny"] > 0 and second.execute_seconds["01_tiny"] == 0
    assert not (out / "stale.html").exists()
    assert "the answer is 42" in " ".join(_read(out / "01_tiny.html").parts)


# --------------------------------------------------------------------------- in Chromium, offline

@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium (.ci/browser_deps.sh)")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                     "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


def _offline_page(browser, off_site: list):
    """A page whose every request not to a file:// URL is aborted and recorded in ``off_site``."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})

    def route(r):
        if r.request.url.startswith(("file://", "data:")):
            r.continue_()
        else:
            off_site.append(r.request.url)
            r.abort()
    context.route("**/*", route)
    page = context.new_page()
    page.set_default_timeout(60_000)
    return page


_IMAGES_LOADED = """async () => {
  const imgs = [...document.images];
  imgs.forEach(i => { i.loading = 'eager'; });
  await Promise.all(imgs.map(i => i.complete ? null : new Promise(r => { i.onload = i.onerror = r; })));
  return imgs.filter(i => !(i.naturalWidth > 0)).map(i => i.getAttribute('src'));
}"""

_MATH_DONE = """() => {
  const boxes = [...document.querySelectorAll('.math')];
  return boxes.length > 0 && boxes.every(b => b.querySelector('.MathJax, .MathJax_Display, mjx-container'));
}"""


def test_every_page_offline_in_chromium(site, browser):
    out, _ = site
    for name in ["index"] + [p.stem for p in NOTEBOOKS]:
        off_site, errors = [], []
        page = _offline_page(browser, off_site)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto((out / f"{name}.html").as_uri(), wait_until="load")
        broken = page.evaluate(_IMAGES_LOADED)
        assert not broken, f"{name}.html: images that did not load: {broken}"
        if name != "index":
            page.wait_for_function(_MATH_DONE, timeout=60_000)
            assert page.locator(".MathJax, .MathJax_Display").count() > 0
            assert page.locator(".MathJax_Error, merror").count() == 0, f"{name}.html: a formula failed"
        assert not errors, f"{name}.html: JavaScript errors {errors}"
        assert not off_site, f"{name}.html asked for files off the site: {off_site}"
        page.context.close()


def test_moving_05s_slider_changes_the_picture(site, browser):
    out, _ = site
    off_site = []
    page = _offline_page(browser, off_site)
    page.goto((out / "05_prompt_to_prompt.html").as_uri(), wait_until="load")
    explorer = page.locator(".p2p-explorer", has=page.locator("option", has_text="cross tau")).first
    explorer.scroll_into_view_if_needed()
    frame, slider = explorer.locator("img.p2p-explorer-frame"), explorer.locator("input[type=range]")
    before = frame.get_attribute("src")
    slider.focus()
    page.keyboard.press("Home")  # cross tau = 0: the target's own maps from the first step
    after = frame.get_attribute("src")
    assert after != before, "moving the slider did not change the picture"
    assert explorer.locator("output").inner_text() == "0"
    assert page.evaluate(_IMAGES_LOADED) == []
    seen = set()
    for option in explorer.locator("option").all_inner_texts():
        explorer.locator("select").select_option(label=option)
        slider.focus()
        page.keyboard.press("End")
        seen.add(frame.get_attribute("src"))
        assert page.evaluate(_IMAGES_LOADED) == [], option
    assert len(seen) == explorer.locator("option").count()  # every control shows its own frames
    assert not off_site, off_site
    page.context.close()
