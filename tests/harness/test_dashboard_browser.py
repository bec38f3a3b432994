"""The dashboard in a real browser: headless Chromium draws every Plotly figure and logs no error.

A probe script is put at the top of a copy of the page: it records ``console.error`` calls,
uncaught errors and rejected promises, and after the page has loaded it writes a JSON summary
of every plot (SVG drawn, traces and marks inside) into the DOM, which ``--dump-dom`` prints.
Skipped when no Chromium is installed (CI installs Debian's ``chromium``; there
``MIXBENCH_REQUIRE_BROWSER=1`` turns the skip into a failure).
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path
from xml.etree import ElementTree

import pytest
import torch

from harness.cli import main
from harness.measure import latency as latency_module
from harness.report import dashboard as report_module

BROWSER = next((p for name in ("chromium", "chromium-browser") if (p := shutil.which(name))), None)
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
    "--virtual-time-budget=5000",
)

PROBE = """<script>
(function () {
  const errors = [];
  const consoleError = console.error;
  console.error = function (...args) { errors.push(args.map(String).join(' ')); consoleError.apply(console, args); };
  window.addEventListener('error', e => errors.push(
    'uncaught: ' + (e.message || (e.target && (e.target.src || e.target.href)))), true);
  window.addEventListener('unhandledrejection', e => errors.push('unhandled rejection: ' + e.reason));
  window.addEventListener('load', () => setTimeout(() => {
    const plots = Array.from(document.querySelectorAll('.plotly-graph-div')).map(div => ({
      drawn: div.classList.contains('js-plotly-plot'),
      svgs: div.querySelectorAll('svg.main-svg').length,
      traces: div.querySelectorAll('.scatterlayer .trace').length,
      marks: div.querySelectorAll('.scatterlayer path.js-line, .scatterlayer path.point').length,
      title: (div.querySelector('.gtitle') || {textContent: ''}).textContent,
    }));
    const th = Array.from(document.querySelectorAll('#latency th')).find(h => h.textContent === 'context');
    th.click();
    const col = Array.from(th.parentNode.children).indexOf(th);
    const sorted = Array.from(document.querySelectorAll('#latency tbody tr'))
      .map(r => Number(r.children[col].textContent));
    const out = document.createElement('pre');
    out.id = 'mixbench-probe';
    out.textContent = JSON.stringify({plots, errors, sorted});
    document.body.appendChild(out);
  }, 500));
})();
</script>"""


def render(page: Path, tmp_path: Path) -> tuple[dict, str]:
    """Load ``page`` (with the probe) in headless Chromium; the probe's summary and the browser's log."""
    probed = tmp_path / f"probed-{page.name}"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    profile = tmp_path / "chromium-profile"
    done = subprocess.run(
        [BROWSER, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    found = re.search(r'<pre id="mixbench-probe">(.*?)</pre>', done.stdout, re.DOTALL)
    assert found, f"the probe did not report (exit {done.returncode}); browser log:\n{done.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1))), done.stderr


@pytest.fixture
def browser():
    if BROWSER is None:
        if os.environ.get("MIXBENCH_REQUIRE_BROWSER"):
            pytest.fail("MIXBENCH_REQUIRE_BROWSER is set but no chromium is on PATH")
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    return BROWSER


@pytest.fixture
def dashboard_suite(write_suite, tmp_path, monkeypatch, capsys) -> Path:
    """A trained micro suite with a latency sweep whose largest context "runs out of memory"
    (its marker is drawn too): the three panels a dashboard can hold. Returns the dashboard folder."""
    monkeypatch.chdir(tmp_path)
    real_prefill = latency_module.Sweep.prefill

    def prefill(self, context):
        if context == 48:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        return real_prefill(self, context)

    monkeypatch.setattr(latency_module.Sweep, "prefill", prefill)
    latency = {"contexts": [16, 32, 48], "warmup": 1, "repeats": 2, "decode_tokens": 4, "vocab_size": 256}
    assert main(["run", str(write_suite(latency=latency))]) == 0
    capsys.readouterr()
    return tmp_path / "results" / "dashboards"


def test_dashboard_renders_every_plot_without_console_errors(browser, dashboard_suite, tmp_path):
    summary, log = render(dashboard_suite / "unit.html", tmp_path)
    titles = [p["title"] for p in summary["plots"]]
    assert len(titles) == 3, summary
    assert titles[0].startswith("Validation perplexity") and titles[1].startswith("Perplexity by token index")
    assert titles[2].startswith("Latency")
    for plot in summary["plots"]:
        assert plot["drawn"] and plot["svgs"] >= 1 and plot["traces"] >= 1 and plot["marks"] >= 1, plot
    assert summary["errors"] == []
    assert "Uncaught" not in log, log
    assert summary["sorted"] == sorted(summary["sorted"]) and len(summary["sorted"]) == 6  # the table sorts


PANELS = (
    "validation-perplexity-vs-training-flops",
    "perplexity-by-token-index-validation",
    "latency-prefill-and-decode-vs-context-length-median-bars-p20-p80",
)


def test_report_writes_one_png_per_panel(browser, dashboard_suite, capsys):
    assert main(["report", "--format", "png"]) == 0
    printed = capsys.readouterr().out
    for name in PANELS:
        image = dashboard_suite / "unit" / f"{name}.png"
        assert f"figure: {image.relative_to(dashboard_suite.parents[1])}" in printed.replace("\n", "")
        data = image.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"  # a PNG signature, then its IHDR width and height
        width, height = struct.unpack(">II", data[16:24])
        assert (width, height) == (1200, 480) and len(data) > 10_000  # drawn, not an empty canvas
    assert sorted(p.stem for p in (dashboard_suite / "unit").iterdir()) == sorted(PANELS)


def test_report_writes_svg_panels_with_their_titles(browser, dashboard_suite):
    assert main(["report", "--format", "svg"]) == 0
    for name, title in zip(PANELS, ("Validation perplexity", "Perplexity by token index", "Latency")):
        root = ElementTree.parse(dashboard_suite / "unit" / f"{name}.svg").getroot()
        assert root.tag.endswith("svg") and title in "".join(root.itertext())


def test_report_without_kaleido_says_what_to_install_in_one_line(dashboard_suite, monkeypatch, capsys):
    def no_kaleido(*args, **kwargs):
        raise RuntimeError("Kaleido requires Kaleido v1.0.0 or greater.\nInstall it with pip.")

    monkeypatch.setattr(report_module.pio, "write_images", no_kaleido)
    assert main(["report", "--format", "png"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot write png figures" in err and "kaleido" in err
    assert (dashboard_suite / "unit.html").exists()  # the HTML dashboard is still written first


def test_unknown_image_format_is_refused():
    with pytest.raises(report_module.ReportError, match="unknown image format 'gif'"):
        report_module.write_panel_images([], Path("unused"), "gif")
