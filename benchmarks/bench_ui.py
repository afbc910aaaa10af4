"""UI benchmark (figures, not a timed test): how fast job changes reach the DOM.

    python benchmarks/bench_ui.py [--jobs 20] [--queue 1000] [--json out.json]

It starts a real JupyterLab with the extension (temporary root, own store),
opens a notebook in headless Chromium with the sidebar shown, and measures:

1. Latency from a job's change on the server (the event's ``ts``, written when
   the server commits the change) to its appearance in the DOM: in the sidebar
   and in the notebook's ``JobQueue`` widget (kernel → comm → view), p50/p99
   over every change of ``--jobs`` Script jobs (submitted, queuing, running,
   each progress report, completed; at least 200 changes).
2. A queue of ``--queue`` jobs (one blocker running, the rest waiting on it):
   the widget's render time for the full table, the comm messages the kernel
   sent to fill it, and, when the blocker is cancelled and the waiting jobs all
   end at once, the messages sent for that burst and the time until the DOM
   shows it.

The browser and the server share one clock (same machine), so DOM time minus
event ``ts`` is the end-to-end latency.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, start_lab, stop_lab  # noqa: E402

ORDER = {"QUEUED": 0, "QUEUING": 1, "RUNNING": 2, "COMPLETED": 3, "FAILED": 3, "CANCELLED": 3}

STEP_SCRIPT = """\
import time
from cosmic_horizons_lab.executor import report

for i in range(10):
    time.sleep(0.3)
    report(progress=(i + 1) / 10)
"""

BLOCKER_SCRIPT = """\
import time
time.sleep(600)
"""

# Records, for every job row of the sidebar and of the queue widget, each state it shows.
OBSERVE = """
() => {
  window.__obs = {sidebar: [], widget: []};
  const note = (where, el) => {
    const bar = el.querySelector('.ch-bar, .chw-bar');
    window.__obs[where].push({
      id: el.dataset.jobId, status: el.dataset.status,
      progress: bar ? parseFloat(bar.style.width) / 100 : 0,
      t: performance.timeOrigin + performance.now(),
    });
  };
  const scan = (root) => {
    root.querySelectorAll('.ch-job[data-job-id]').forEach(el => note('sidebar', el));
    root.querySelectorAll('.chw-queue tr[data-job-id]').forEach(el => note('widget', el));
  };
  new MutationObserver(records => {
    const rows = new Set();
    for (const r of records) {
      let el = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      const row = el && el.closest('.ch-job[data-job-id], .chw-queue tr[data-job-id]');
      if (row) rows.add(row);
      for (const n of r.addedNodes || []) {
        if (n.nodeType === 1) {
          if (n.matches('.ch-job[data-job-id], .chw-queue tr[data-job-id]')) rows.add(n);
          n.querySelectorAll && n.querySelectorAll('.ch-job[data-job-id], .chw-queue tr[data-job-id]').forEach(x => rows.add(x));
        }
      }
    }
    for (const row of rows) note(row.classList.contains('ch-job') ? 'sidebar' : 'widget', row);
  }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true,
                             attributeFilter: ['data-status', 'style']});
}
"""


def epoch_ms(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000


def latencies(events: list[dict[str, Any]], seen: list[dict[str, Any]]) -> list[float]:
    """For each event: the first DOM record showing that state or a later one, minus the event's ts."""
    by_job: dict[str, list[dict[str, Any]]] = {}
    for rec in seen:
        by_job.setdefault(rec["id"], []).append(rec)
    out = []
    for ev in events:
        p = ev.get("payload") or {}
        t0 = epoch_ms(ev["ts"])
        if ev["type"] == "job.progress":
            # A progress change: shown once the bar reaches it (or the job already ended).
            want_rank, progress = ORDER["RUNNING"], float(p.get("progress") or 0.0)
        else:
            want_rank, progress = ORDER.get(str(p.get("status")), 0), None
        for rec in by_job.get(ev["job_id"], []):
            rank = ORDER.get(rec["status"], 0)
            if rank < want_rank:
                continue
            if progress is not None and rank < 3 and rec["progress"] + 1e-3 < progress:
                continue
            out.append(rec["t"] - t0)
            break
    return out


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


def notebook(cells: list[str]) -> str:
    return json.dumps({
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [],
                   "source": s} for i, s in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    })


def run_cells(page: Any, n: int) -> None:
    page.wait_for_function(
        "() => [...document.querySelectorAll('.jp-StatusBar-TextItem')].some(e => /ipykernel\\) \\| Idle/.test(e.textContent))",
        timeout=90_000)
    page.locator(".jp-Notebook .jp-Cell").first.locator(".jp-InputPrompt").click()
    for _ in range(n):
        page.keyboard.press("Shift+Enter")


def printed(page: Any, key: str, timeout: float = 120) -> list[str]:
    """The words after ``key`` in the output a cell printed (``print(key, ...)``)."""
    loc = page.locator(".jp-OutputArea-output", has_text=key + " ")
    loc.first.wait_for(timeout=timeout * 1000)
    return loc.first.inner_text().split(key, 1)[1].split()


def run_code(page: Any, code: str) -> None:
    """Type code into the cell in edit mode (Shift+Enter leaves one below) and run it."""
    page.keyboard.type(code)
    page.keyboard.press("Shift+Enter")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20, help="Script jobs for the latency figures")
    parser.add_argument("--queue", type=int, default=1000, help="jobs in the big queue")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    base = Path(tempfile.mkdtemp(prefix="bench-ui-"))
    root = base / "root"
    root.mkdir()
    (root / "steps.py").write_text(STEP_SCRIPT)
    (root / "blocker.py").write_text(BLOCKER_SCRIPT)
    cells = [
        "from cosmic_horizons_lab.notebook.lab import Lab\nlab = Lab()\nqueue = lab.queue()\nqueue",
    ]
    (root / "bench.ipynb").write_text(notebook(cells))
    server = start_lab(root, base / "state")
    figures: dict[str, Any] = {}
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(server.lab_url("lab/tree/bench.ipynb"))
            page.wait_for_selector(".jp-Notebook", timeout=90_000)
            tab = page.locator("li.lm-TabBar-tab[data-id='cosmic-horizons-sidebar']")
            tab.wait_for(timeout=30_000)
            tab.click()
            page.wait_for_function("document.querySelector('.ch-conn')?.dataset.state === 'open'", timeout=30_000)
            run_cells(page, len(cells))
            page.wait_for_selector(".chw-queue", timeout=90_000)
            page.wait_for_timeout(1500)  # the kernel's event stream is open
            page.evaluate(OBSERVE)

            # 1. latency of changes, sidebar and notebook widget
            ids = [server.submit_script("steps.py")["id"] for _ in range(args.jobs)]
            for job_id in ids:
                server.wait_status(job_id, {"COMPLETED", "FAILED", "CANCELLED"}, timeout=300)
            page.wait_for_timeout(1500)
            events = [ev for job_id in ids
                      for ev in server.request("GET", f"jobs/{job_id}/events")["events"]]
            seen = page.evaluate("window.__obs")
            for where in ("sidebar", "widget"):
                lat = latencies(events, seen[where])
                figures[f"{where}_latency_ms"] = {
                    "changes": len(events), "matched": len(lat),
                    "p50": round(pct(lat, 50), 1), "p99": round(pct(lat, 99), 1), "max": round(max(lat), 1),
                }

            # 2. a big queue: one blocker running, the rest waiting on it
            blocker = server.submit_script("blocker.py")
            server.wait_status(blocker["id"], {"RUNNING"}, timeout=60)
            waiting = [{"agent": "Script", "params": {"path": "steps.py"}, "depends_on": [blocker["id"]]}
                       for _ in range(args.queue - 1)]
            t_submit = time.perf_counter()
            for k in range(0, len(waiting), 250):
                server.request("POST", "jobs/submit-batch", {"jobs": waiting[k:k + 250]})
            figures["queue_submit_s"] = round(time.perf_counter() - t_submit, 2)

            page.locator(".jp-Notebook .jp-Cell").last.locator(".jp-InputPrompt").click()
            page.keyboard.press("Enter")  # edit the empty cell Shift+Enter left below
            run_code(page, "big = lab.queue(limit=%d)\nbig" % args.queue)
            big = page.locator(".chw-queue").nth(1)
            big.wait_for(timeout=60_000)
            page.wait_for_function(
                "n => { const q = document.querySelectorAll('.chw-queue')[1];"
                " return q && Number(q.dataset.rows) >= n; }", arg=args.queue, timeout=120_000)
            page.wait_for_timeout(500)
            figures["queue_1000"] = {
                "rows": int(big.get_attribute("data-rows")),
                "render_ms": float(big.get_attribute("data-render-ms")),
                "render_and_paint_ms": float(big.get_attribute("data-paint-ms") or "nan"),
            }
            run_code(page, "print('FILL', big.comm_messages, len(big.jobs))")
            messages, rows = printed(page, "FILL")[:2]
            figures["queue_1000"]["comm_messages_to_fill"] = int(messages)
            run_code(page, "m0, e0 = big.comm_messages, lab.feed.received\nprint('MARK', m0)")
            printed(page, "MARK")

            # The burst: cancel the blocker; every waiting job ends at once.
            t_cancel = time.perf_counter()
            server.request("DELETE", f"jobs/{blocker['id']}")
            page.wait_for_function(
                "() => { const q = document.querySelectorAll('.chw-queue')[1];"
                " return q && !q.querySelector(\"tr[data-status='QUEUED'], tr[data-status='RUNNING'], tr[data-status='QUEUING']\"); }",
                timeout=180_000)
            figures["queue_1000"]["burst_settled_s"] = round(time.perf_counter() - t_cancel, 2)
            page.wait_for_timeout(1000)
            run_code(page, "print('BURST', big.comm_messages - m0, lab.feed.received - e0)")
            sent, received = printed(page, "BURST")[:2]
            figures["queue_1000"]["burst_events_received"] = int(received)
            figures["queue_1000"]["burst_comm_messages"] = int(sent)
            page.screenshot(path=str(base / "bench.png"))
            browser.close()
    finally:
        stop_lab(server)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text)


if __name__ == "__main__":
    main()
