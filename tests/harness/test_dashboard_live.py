"""The dashboard while cells train: running cells' live curves drawn in headless Chromium, a page that
reloads itself, health flags, and predicted beside actual GPU-hours once a GPU run is done."""

from __future__ import annotations

import html
import json
import re
import subprocess
from datetime import datetime, timezone

from test_dashboard_browser import BROWSER, FLAGS, browser  # noqa: F401 - the fixture skips without Chromium

from harness.monitor.live import LiveCurve
from harness.report.dashboard import write_reports
from harness.store.database import RunRecord, Store

PROBE = """<script>
window.addEventListener('load', () => setTimeout(() => {
  const plots = Array.from(document.querySelectorAll('.plotly-graph-div')).map(div => ({
    title: (div.querySelector('.gtitle') || {textContent: ''}).textContent,
    traces: div.querySelectorAll('.scatterlayer .trace').length,
    lines: div.querySelectorAll('.scatterlayer path.js-line').length,
    points: div.querySelectorAll('.scatterlayer path.point').length,
  }));
  const refresh = document.querySelector("meta[http-equiv='refresh']");
  const out = document.createElement('pre');
  out.id = 'mixbench-probe';
  out.textContent = JSON.stringify({plots, refresh: refresh && refresh.content});
  document.body.appendChild(out);
}, 500));
</script>"""


def live_store(tmp_path) -> Store:
    """A suite with one running cell that has logged 12 steps (one a loss spike) and one done cell."""
    store = Store(tmp_path / "live.db")
    store.claim(RunRecord("live1", "unit", "ttt_linear", "transformer", "125m", 2048, "pile", {}))
    hook = LiveCurve(store, "live1", steps=100)
    losses = [6.0, 5.5, 5.2, 5.0, 4.9, 4.8, 12.0, 4.7, 4.6, 4.5, 4.5, 4.4]
    for i, loss in enumerate(losses):
        step = 10 * (i + 1)
        hook(step - 10, [(step, "train/loss", loss), (step, "tokens/s/recent", 1000.0)], step, step * 4096)
    store.claim(RunRecord("done1", "unit", "attention", "transformer", "125m", 2048, "pile", {}))
    store.add_throughput(
        {
            "mixer": "attention",
            "backbone": "transformer",
            "size": "125m",
            "seq_len": 2048,
            "backend": "flash-attn",
            "gpu": "H100",
            "gpus": 8,
            "tokens_per_s": 8 * 147_000.0,
            "source": "bench",
            "created_at": datetime(2026, 1, 1, tzinfo=timezone.utc),
        }
    )
    store.finish(
        "done1",
        metrics=[
            (1, "train/tokens", 2.2e9),
            (1, "flops/train", 1.94e18),
            (1, "train/seconds", 7200.0),
            (1, "train/world_size", 2.0),
            (1, "val/ppl", 20.0),
            (1, "train/tokens_per_s", 3e5),
        ],
        position_loss=[(0, 0, 2048, 3.0)],
        n_params=1,
        n_params_non_embedding=1,
        backend="flash-attn",
        environment={"device": "NVIDIA H100 80GB HBM3"},
    )
    return store


def test_the_page_shows_predicted_and_actual_gpu_hours_and_the_flags(tmp_path):
    (page,) = write_reports(live_store(tmp_path), tmp_path / "dash")
    text = page.read_text()
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", text)
    # the dry run before it: 2.2e9 tokens / 147,000 tokens/s per GPU / 3600 = 4.157 GPU-hours; it took 2 h on 2 GPUs
    assert "4.16 (measured)" in cells and cells[cells.index("4.16 (measured)") + 1] == "4"
    assert "loss spike, last ×2.4 at step 70" in cells, "12.0 over 5.1, the median of the six losses before it"
    assert "<meta http-equiv='refresh' content='60'>" in text


def test_a_suite_with_no_running_cell_does_not_reload(tmp_path):
    store = live_store(tmp_path)
    store.fail("live1", "RuntimeError: stopped")
    (page,) = write_reports(store, tmp_path / "dash")
    assert "http-equiv='refresh'" not in page.read_text() and "running cells" not in page.read_text()


def test_running_cells_curves_draw_in_chromium(browser, tmp_path):  # noqa: F811 - the imported fixture
    (page,) = write_reports(live_store(tmp_path), tmp_path / "dash")
    probed = tmp_path / "probed.html"
    probed.write_text(page.read_text().replace("<head>", "<head>" + PROBE, 1))
    done = subprocess.run(
        [BROWSER, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", probed.as_uri()],
        capture_output=True,
        text=True,
        timeout=180,
    )
    found = re.search(r'<pre id="mixbench-probe">(.*?)</pre>', done.stdout, re.DOTALL)
    assert found, done.stderr[-3000:]
    summary = json.loads(html.unescape(found.group(1)))
    (live,) = [p for p in summary["plots"] if p["title"].startswith("Training loss of running cells")]
    assert live["traces"] == 2 and live["lines"] == 1 and live["points"] == 1, "the curve, and its spike marked"
    assert summary["refresh"] == "60"
