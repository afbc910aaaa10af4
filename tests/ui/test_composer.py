"""The pipeline composer in headless Chromium against a real JupyterLab (issue 13, scope 3).

Three stages added from the form, a cycle refused before submission (the server refuses the
same stages too), the pipeline submitted and followed to the end in the DAG, saved as a
``*.pipeline.json`` file that fits the format's JSON Schema, opened again from the file
browser and re-run.
"""

from __future__ import annotations

import json
import re
import urllib.error

import jsonschema
import pytest

from cosmic_horizons_lab.protocol.pipelines import PIPELINE_FILE_SCHEMA, pipeline_body

from .conftest import copy_to_docs, open_lab, open_sidebar, screenshot

pytestmark = pytest.mark.ui

STAGES = [("calibrate", []), ("image", ["calibrate"]), ("detect", ["image"])]


def add_stage(composer, name: str, parents: list[str]) -> None:
    composer.locator(".ch-stage-name-input").fill(name)
    composer.locator(".ch-parents").select_option(parents)
    form = composer.locator(".ch-form")
    form.locator(".ch-field[data-field='agent'] select").select_option("Script")
    form.locator(".ch-field[data-field='params.path'] input").fill("fast.py")
    form.locator(".ch-submit").click()
    composer.locator(f".ch-stage[data-stage='{name}']").wait_for(timeout=10_000)


def wait_all(page, composer, status: str, names: list[str]) -> None:
    for name in names:
        composer.locator(f".ch-dag .ch-node[data-stage='{name}'][data-status='{status}']").wait_for(timeout=90_000)


def test_compose_refuse_a_cycle_submit_save_and_rerun(page, lab_server) -> None:
    page.set_default_timeout(60_000)
    open_lab(page, lab_server)
    open_sidebar(page).locator(".ch-open-composer").click()
    composer = page.locator(".ch-composer")
    composer.locator(".ch-form .ch-field[data-field='agent'] select").wait_for(timeout=30_000)
    for name, parents in STAGES:
        add_stage(composer, name, parents)
    assert composer.locator(".ch-dag .ch-edge").count() == 2
    assert composer.locator(".ch-composer-problems div").count() == 0

    # calibrate after detect: a cycle. Shown, and not submitted; the server refuses the same.
    add_stage(composer, "calibrate", ["detect"])
    problems = composer.locator(".ch-composer-problems").inner_text()
    assert "cycle" in problems, problems
    assert composer.locator(".ch-dag .ch-node[data-cycle='true']").count() == 3
    before = lab_server.request("GET", "jobs/history/list?page_size=200")["total"]
    composer.locator(".ch-run").click()
    assert "Not submitted" in composer.locator(".ch-composer-message").inner_text()
    stages = page.evaluate("window.cosmicHorizonsComposer.stages")
    with pytest.raises(urllib.error.HTTPError) as refused:
        lab_server.request("POST", "pipelines", {"stages": stages})
    assert refused.value.code == 400
    assert lab_server.request("GET", "jobs/history/list?page_size=200")["total"] == before
    screenshot(page, "composer-cycle", selector=".ch-composer")

    # Fixed, submitted, followed to the end.
    add_stage(composer, "calibrate", [])
    composer.locator(".ch-run").click()
    composer.locator(".ch-composer-message[data-state='ok']").wait_for(timeout=30_000)
    wait_all(page, composer, "COMPLETED", [n for n, _ in STAGES])
    first = page.evaluate("Object.fromEntries(window.cosmicHorizonsComposer.jobIds)")
    for name, parents in STAGES:
        job = lab_server.request("GET", f"jobs/{first[name]}")
        assert job["status"] == "COMPLETED"
        assert sorted(job.get("depends_on") or []) == sorted(first[p] for p in parents), job
    screenshot(page, "composer", selector=".ch-composer")
    copy_to_docs("composer")

    # Saved in the user's tree, in the format the schema describes.
    composer.locator(".ch-pipeline-path").fill("three.pipeline.json")
    composer.locator(".ch-save").click()
    composer.locator(".ch-composer-message:has-text('Saved three.pipeline.json')").wait_for(timeout=15_000)
    saved = json.loads((lab_server.root / "three.pipeline.json").read_text())
    jsonschema.validate(saved, PIPELINE_FILE_SCHEMA)
    assert [(s["name"], s["depends_on"]) for s in saved["stages"]] == [(n, p) for n, p in STAGES]
    assert pipeline_body(saved)["stages"] == saved["stages"]

    # Opened again from the file browser, and re-run: new jobs, the same DAG.
    page.locator("li.lm-TabBar-tab[data-id='filebrowser']").click()
    item = page.locator(".jp-DirListing-item", has_text="three.pipeline.json")
    item.wait_for(timeout=60_000)  # the file browser shows the new file on its next refresh
    item.click(button="right")
    page.locator(".lm-Menu-item:has-text('Open in pipeline composer')").click()
    reopened = page.locator(".ch-composer").last
    reopened.locator(".ch-composer-message:has-text('Opened three.pipeline.json')").wait_for(timeout=15_000)
    assert reopened.locator(".ch-stage").count() == 3
    reopened.locator(".ch-run").click()
    reopened.locator(".ch-composer-message:has-text('Submitted pipeline')").wait_for(timeout=30_000)
    wait_all(page, reopened, "COMPLETED", [n for n, _ in STAGES])
    second = page.evaluate("Object.fromEntries(window.cosmicHorizonsComposer.jobIds)")
    assert set(second) == set(first) and not set(second.values()) & set(first.values())


# In the page: a client point on the edge parent → child where a click lands on the edge itself (it
# is a curve, not its box, and may pass under another stage's node).
EDGE_POINT = """
([from, to]) => {
  const path = document.querySelector(`.ch-composer .ch-edge-hit[data-from='${from}'][data-to='${to}']`);
  const length = path.getTotalLength();
  for (let i = 1; i < 40; i++) {
    const p = path.getPointAtLength((i / 40) * length);
    const q = new DOMPoint(p.x, p.y).matrixTransform(path.getScreenCTM());
    if (document.elementFromPoint(q.x, q.y) === path) {
      return [q.x, q.y];
    }
  }
  return null;
}
"""


def drag(page, composer, parent: str, child: str) -> None:
    """Press on the parent's node, move onto the child's in steps, release: as a user draws an edge."""
    a = composer.locator(f".ch-dag .ch-node[data-stage='{parent}'] rect").bounding_box()
    b = composer.locator(f".ch-dag .ch-node[data-stage='{child}'] rect").bounding_box()
    page.mouse.move(a["x"] + a["width"] / 2, a["y"] + a["height"] / 2)
    page.mouse.down()
    page.mouse.move(b["x"] + b["width"] / 3, b["y"] + b["height"] / 2, steps=8)
    page.mouse.up()


def edges(composer) -> set[tuple[str, str]]:
    return {(e.get_attribute("data-from"), e.get_attribute("data-to"))
            for e in composer.locator(".ch-dag .ch-edge").all()}


def test_edges_drawn_by_mouse_are_submitted_and_the_dag_follows_the_events(page, lab_server) -> None:
    """Parents drawn in the DAG (a cycle refused, an edge clicked away) reach POST pipelines as
    depends_on; while the pipeline runs, the nodes move with the event stream, not by GET jobs/{id}."""
    page.set_default_timeout(60_000)
    open_lab(page, lab_server)
    open_sidebar(page).locator(".ch-open-composer").click()
    composer = page.locator(".ch-composer")
    composer.locator(".ch-form .ch-field[data-field='agent'] select").wait_for(timeout=30_000)
    for name in ("a", "b", "c"):
        add_stage(composer, name, [])
    assert edges(composer) == set()

    drag(page, composer, "a", "b")
    drag(page, composer, "b", "c")
    assert edges(composer) == {("a", "b"), ("b", "c")}
    assert "after a" in composer.locator(".ch-stage[data-stage='b']").inner_text()

    # c → a would close a cycle: refused with a message, nothing drawn.
    drag(page, composer, "c", "a")
    message = composer.locator(".ch-composer-message")
    assert message.get_attribute("data-state") == "error" and "cycle" in message.inner_text(), message.inner_text()
    assert edges(composer) == {("a", "b"), ("b", "c")}
    assert composer.locator(".ch-dag .ch-node[data-cycle='true']").count() == 0

    # a → c drawn, then clicked away.
    drag(page, composer, "a", "c")
    assert edges(composer) == {("a", "b"), ("b", "c"), ("a", "c")}
    x, y = page.evaluate(EDGE_POINT, ["a", "c"])
    page.mouse.click(x, y)
    assert edges(composer) == {("a", "b"), ("b", "c")}
    screenshot(page, "composer-drawn", selector=".ch-composer")

    # Every request the page makes for one job's record while the pipeline runs.
    record = re.compile(r"/cosmic-horizons/api/jobs/([^/?]+)$")
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(m.group(1)) if r.method == "GET"
            and (m := record.search(r.url.split("?", 1)[0])) else None)
    composer.locator(".ch-run").click()
    composer.locator(".ch-composer-message:has-text('Submitted pipeline')").wait_for(timeout=30_000)
    wait_all(page, composer, "COMPLETED", ["a", "b", "c"])
    ids = page.evaluate("Object.fromEntries(window.cosmicHorizonsComposer.jobIds)")

    # What POST pipelines received: the drawn edges as the jobs' depends_on.
    for name, parents in (("a", []), ("b", ["a"]), ("c", ["b"])):
        job = lab_server.request("GET", f"jobs/{ids[name]}")
        assert sorted(job.get("depends_on") or []) == sorted(ids[p] for p in parents), job
        node = composer.locator(f".ch-dag .ch-node[data-stage='{name}']")
        assert node.get_attribute("data-status") == job["status"] == "COMPLETED"
    # The composer polled nothing: the only record requests are the jobs panel's one look at each
    # job it first hears of (a poll would ask for each running stage every second of its run).
    ours = [i for i in fetched if i in ids.values()]
    assert all(ours.count(i) <= 1 for i in ids.values()), fetched
    assert len(ours) <= len(ids), fetched
