"""The reproduce report: its HTML structure (always) and its rendering in headless Chromium.

Chromium comes from Debian's package; the session fixture installs it when it is missing and
the tests run as root with apt-get (bounded by INSTALL_TIMEOUT_S), and the browser test skips,
saying why, where it cannot be had. The structural tests need no browser.
"""

import base64
import os
import shutil
import struct
import subprocess
import time
from html.parser import HTMLParser

import pytest
import torch

from ridgeline.reproduce import pipeline as reproduce
from ridgeline.reproduce import plan as planning
from ridgeline.reproduce import report
from ridgeline.science import experiments
from tests.synthetic import fake_cifar

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
INSTALL_TIMEOUT_S = 300
BROWSER_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A finished small reproduction on the tiny preset: fake objective for the landscapes
    and tuner, real (tiny) training on synthetic data for all three experiments."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("report")
    plan = planning.Plan("tiny", "test", 1.0, "test", steps=(5, 4), seeds=1, tune=(5, 3),
                          diagnostics=("b", "c", "a"))
    opts = reproduce.Options("tests.test_reproduce:fake_objective", fake_cifar(256, 50),
                             device="cpu", progress=False)
    try:
        paths = reproduce.run(plan, root / "s.journal", root / "out", opts,
                              command="ridgeline reproduce --preset tiny", say=lambda _: None)
    finally:
        torch.set_num_threads(threads)
    return paths


class Page(HTMLParser):
    """The images, tables (id → body rows of cell texts) and external references of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images, self.tables, self.external = [], {}, []
        self._table = self._row = None
        self._cell = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        ref = a.get("src") or a.get("href")
        if tag in ("img", "script", "link", "iframe") and ref and not ref.startswith("data:"):
            self.external.append((tag, ref))
        if tag == "table":
            self._table = self.tables.setdefault(a.get("id"), [])
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = True
            self._row.append("")

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = False
        elif tag == "tr" and self._row:
            self._table.append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell:
            self._row[-1] += data


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_html_is_self_contained_with_valid_pngs_and_tables(built):
    text = built["html"].read_text()
    page = Page(text)
    assert not page.external
    assert len(page.images) == built["md"].read_text().count("![") == 2 + 3 + 4
    for img in page.images:
        prefix = "data:image/png;base64,"
        assert img["src"].startswith(prefix)
        w, h = png_size(base64.b64decode(img["src"][len(prefix):], validate=True))
        assert w > 100 and h > 100 and img["alt"]
    paper = page.tables["paper-table"]
    assert [row[1] for row in paper] == ["30.6 %", "94.2 %", "22", "not reproduced", "< 10",
                                         "not reproduced"]
    assert paper[2][2] == "5 (stopped at the cap of 5: budget)"
    assert len(page.tables["tune-bad"]) == 5 and len(page.tables["tune-sensible"]) == 3
    ridges = page.tables["ridge-table"]
    assert [r[0] for r in ridges] == ["lr-batch", "lr-momentum", "lr-wd"]
    assert all(r[5] in ("yes", "no") and r[6] == "20/20" for r in ridges)
    assert len(page.tables["equilibrium-table"]) == 6
    assert len(page.tables["symmetry-table"]) == 3
    assert page.tables["symmetry-table"][0][1] == "0"  # r=2 with ε scaled: bit-exact
    assert "document.body.dataset.imagesLoaded" in text


def test_the_planner_counts_the_runs_the_experiments_make(built):
    planned = sum(experiments.planned_runs(k, 1, with_b=True) for k in ("a", "b", "c"))
    assert built["ran"]["diagnostics"] == planned == 9


def test_markdown_quotes_the_command_and_links_existing_figures(built):
    md = built["md"].read_text()
    assert md.startswith("# How to train your ResNet, part 5, reproduced: tiny")
    assert "Produced by `ridgeline reproduce --preset tiny`" in md
    for line in md.splitlines():
        if line.startswith("!["):
            link = line[line.index("](") + 2:-1]
            assert (built["md"].parent / link).is_file()


def test_an_empty_storage_reports_every_section_as_not_run(tmp_path):
    paths = report.write_report(tmp_path / "empty.journal", "cpu-mini", tmp_path / "out")
    assert not (tmp_path / "empty.journal").exists()  # reporting never creates a storage
    page = Page(paths["html"].read_text())
    assert not page.images
    assert {row[2] for row in page.tables["paper-table"]} == {report.NOT_RUN}
    assert {row[2] for row in page.tables["ridge-table"]} == {report.NOT_RUN}
    assert {row[1] for row in page.tables["equilibrium-table"]} == {report.NOT_RUN}
    assert {row[1] for row in page.tables["runs-table"]} == {report.NOT_RUN}


# ----------------------------------------------------------------------------- browser

@pytest.fixture(scope="session")
def chromium():
    found = shutil.which("chromium")
    if found is None and hasattr(os, "geteuid") and os.geteuid() == 0 \
            and shutil.which("apt-get"):
        found = install_chromium()
    if found is None:
        pytest.skip("headless Chromium is not installed and cannot be installed here (that "
                    "needs root and apt-get: apt-get install -y chromium); the structural "
                    "HTML tests cover the report without a browser")
    return found


def install_chromium() -> str | None:
    """Debian's chromium package; the package lists are refreshed only if the first try fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    deadline = time.monotonic() + INSTALL_TIMEOUT_S
    for cmd in (["apt-get", "install", "-y", "-q", "chromium"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "chromium"]):
        if shutil.which("chromium") or time.monotonic() >= deadline:
            break
        try:
            subprocess.run(cmd, env=env, capture_output=True,
                           timeout=deadline - time.monotonic())
        except subprocess.TimeoutExpired:
            break
    return shutil.which("chromium")


def headless(binary: str, profile, *args: str) -> subprocess.CompletedProcess:
    """Chromium as root, offline and quiet: no sandbox (root), GPU, QUIC, sync or updates."""
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=BROWSER_TIMEOUT_S)


def test_report_renders_in_headless_chromium(built, chromium, tmp_path):
    url = built["html"].resolve().as_uri()
    n = len(Page(built["html"].read_text()).images)
    dom = headless(chromium, tmp_path / "p1", "--virtual-time-budget=5000", "--dump-dom",
                   url).stdout
    assert f'data-images-loaded="{n}/{n}"' in dom  # set by the page once all decoded
    assert '<table id="paper-table">' in dom and "94.2 %" in dom
    shot = tmp_path / "report.png"
    headless(chromium, tmp_path / "p2", "--window-size=1200,3000", "--hide-scrollbars",
             f"--screenshot={shot}", url)
    assert png_size(shot.read_bytes()) == (1200, 3000)
