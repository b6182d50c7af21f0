"""End to end through the Dagster UI: `dagster dev` (webserver + daemon) on a loopback port with a
temp DAGSTER_HOME, a `filtered_genes` partition launched through the GraphQL API and dequeued by
the daemon, then the UI in a real headless Chromium (Debian's chromium driven by Playwright): the
global asset graph shows every asset of the Definitions with its lineage edges, the `targets`
partitions are listed, and the materialization's funnel (Markdown table + embedded PNG) renders.
Screenshots go to $WYCRYST_TEST_ARTIFACTS (default .wycryst/test-artifacts/ui)."""

from __future__ import annotations

import os
import re
import shutil
import time

import dagster as dg
import pytest

from tests.conftest import asset_runner, materialize_through_sampling
from tests.ui_support import (
    CHROMIUM,
    LAUNCH_RUN,
    DagsterDev,
    artifacts_dir,
    repository_selector,
    run_event_log,
    wait_for_run,
)

PARTITION = "CsPbI3-221"  # small_snapshot holds one other SG-221 ternary: the polymorph task's origin
UI_TIMEOUT_MS = 90_000
SCREENSHOTS = ("asset-graph.png", "filtered_genes-partitions.png", "filtered_genes-partition-metadata.png",
               "filtered_genes-funnel.png")


def _require_browser():
    """Skip without a browser, unless WYCRYST_REQUIRE_BROWSER=1 (CI) makes that a failure."""
    missing = None
    if not CHROMIUM.exists():
        missing = f"no chromium at {CHROMIUM}"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError as exc:
            missing = f"playwright for Python is not installed ({exc})"
    if missing:
        if os.environ.get("WYCRYST_REQUIRE_BROWSER") == "1":
            pytest.fail(f"{missing} and WYCRYST_REQUIRE_BROWSER=1")
        pytest.skip(missing)


def _materialize_upstream(partition: str) -> None:
    """mp_snapshot -> wyckoff_genes -> synthesizability_model, then a tiny pvae_model and
    sampled_genes for one partition, in-process against the instance the server will use."""
    from wycryst_assets.assets.pvae import TrainingDevice, model_dir
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.resources import warehouse_resource

    resources = {"warehouse": warehouse_resource(), "training_device": TrainingDevice(accelerator="cpu", devices="1")}
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        sampled = materialize_through_sampling(asset_runner(instance, resources), partition, samples_per_origin=50)
        # a 1-epoch model fails the blocking reconstruction check, but its checkpoint is written
        assert (model_dir(partition) / "model.json").is_file()
        assert sampled.success


def _launch_filtered_genes(server: DagsterDev, partition: str) -> str:
    location, repository, jobs = repository_selector(server)
    job_names = [j["name"] for j in jobs if j["isAssetJob"]]
    job = next((n for n in job_names if n.startswith("__ASSET_JOB")), None)
    assert job, f"no implicit asset job among {job_names}"
    result = server.graphql(LAUNCH_RUN, {"executionParams": {
        "selector": {"repositoryLocationName": location, "repositoryName": repository, "jobName": job,
                     "assetSelection": [{"path": ["filtered_genes"]}]},
        # one process for the run (the default multiprocess executor would start a second Python
        # for the single step: ~25 s of imports on 2 cores); queue -> daemon -> run worker as usual
        "runConfigData": {"execution": {"config": {"in_process": {}}}},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }})["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    assert result["run"]["status"] in {"QUEUED", "NOT_STARTED", "STARTING", "STARTED"}, result
    return result["run"]["runId"]


def _markdown_rows(markdown: str) -> list[list[str]]:
    """The rows (header first) of the first Markdown table in ``markdown``."""
    rows = []
    for line in markdown.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if not all(re.fullmatch(r"-+", c) for c in cells):
            rows.append(cells)
    return rows


def _name_matches(shown: str, key: str) -> bool:
    """The graph truncates long names in the middle ("synthesizab…_model")."""
    if "…" not in shown:
        return shown == key
    head, tail = shown.split("…", 1)
    return key.startswith(head) and key.endswith(tail) and len(key) > len(head) + len(tail)


def _check_asset_graph(page, expected_keys: list[str], expected_edges: set[tuple[str, str]], shots) -> None:
    """The global lineage page with every group expanded: one node per asset, one edge per dependency."""
    from playwright.sync_api import expect

    page.goto("/asset-groups")
    page.get_by_text("Global asset lineage").wait_for()
    group_headers = page.locator("foreignObject.group")
    expect(group_headers.first).to_be_visible()
    page.get_by_role("button", name="settings", exact=True).click()  # the graph's gear, not the nav's "Settings"
    page.get_by_role("menuitem", name="Expand all groups").click()
    names = page.locator("foreignObject [class*='AssetNode_assetName']")
    expect(names).to_have_count(len(expected_keys))
    page.keyboard.press("Escape")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=shots / "asset-graph.png")

    nodes = page.evaluate("""() => Array.from(document.querySelectorAll("foreignObject [class*='AssetNode_assetName']"))
        .map(el => { const f = el.closest('foreignObject');
                     return {name: el.textContent.trim(), x: +f.getAttribute('x'), y: +f.getAttribute('y'),
                             w: +f.getAttribute('width'), h: +f.getAttribute('height')}; })""")
    by_key = {}
    for node in nodes:
        keys = [k for k in expected_keys if _name_matches(node["name"], k)]
        assert len(keys) == 1, f"graph node {node['name']!r} matches {keys} of {expected_keys}"
        by_key[keys[0]] = node
    assert sorted(by_key) == sorted(expected_keys), f"graph shows {sorted(by_key)}"

    # lineage: every edge path starts at the right side of its upstream node and ends (arrow) at
    # the left side of its downstream node (left-to-right layout)
    paths = page.evaluate("""() => Array.from(document.querySelectorAll("svg[class*='svgContainer'] path[marker-end]"))
        .map(p => p.getAttribute('d'))""")

    def node_at(x, y, side):
        for key, n in by_key.items():
            edge_x = n["x"] + n["w"] if side == "right" else n["x"]
            if abs(x - edge_x) <= 25 and n["y"] <= y <= n["y"] + n["h"]:
                return key
        return None

    drawn = set()
    for d in paths:
        points = [(float(a), float(b)) for a, b in re.findall(r"(-?[\d.]+)[ ,](-?[\d.]+)", d)]
        (sx, sy), (ex, ey) = points[0], points[-1]
        drawn.add((node_at(sx, sy, "right"), node_at(ex, ey, "left")))
    assert drawn == expected_edges, (
        f"lineage edges differ: missing {sorted(expected_edges - drawn)}, unexpected {sorted(drawn - expected_edges)}")


def _check_partitions_and_funnel(page, partition: str, partition_keys: list[str], run_id: str, funnel_md: str,
                                 shots) -> None:
    from playwright.sync_api import expect

    page.goto("/assets/filtered_genes?view=partitions")
    for key in partition_keys:
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
    expect(page.get_by_text("Materialized (1)")).to_be_visible()
    page.screenshot(path=shots / "filtered_genes-partitions.png")

    page.get_by_text(partition, exact=True).first.click()
    page.wait_for_url(re.compile(r"partition=" + re.escape(partition)))
    funnel_row = page.locator("tr").filter(has=page.get_by_text("funnel", exact=True))
    show = funnel_row.get_by_text("[Show Markdown]")
    expect(show).to_be_visible()
    expect(page.get_by_text("held_out_gene_sampled", exact=True)).to_be_visible()
    expect(page.get_by_text("Materialized", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name=run_id[:8])).to_be_visible()  # the run launched through GraphQL
    page.screenshot(path=shots / "filtered_genes-partition-metadata.png")

    show.click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_text("funnel", exact=True).first).to_be_visible()
    # the rendered table is the materialization's funnel, cell for cell
    expected = _markdown_rows(funnel_md)
    table = dialog.locator("table").first
    expect(table).to_be_visible()
    rendered = table.evaluate("t => Array.from(t.rows).map(r => Array.from(r.cells).map(c => c.textContent.trim()))")
    assert rendered == expected, f"funnel table rendered as {rendered}, metadata holds {expected}"
    assert {"stage", "remaining"} <= set(rendered[0])
    # the bar chart: an embedded PNG that the browser decoded
    img = dialog.locator("img[src^='data:image/png;base64,']")
    expect(img).to_have_count(1)
    expect(img).to_have_attribute("alt", f"{partition}: filter funnel")
    page.wait_for_function("img => img.complete && img.naturalWidth > 100 && img.naturalHeight > 100",
                           arg=img.element_handle())
    img.scroll_into_view_if_needed()
    page.screenshot(path=shots / "filtered_genes-funnel.png")


@pytest.mark.timeout(600)
def test_dagster_ui_end_to_end(wycryst_env, small_snapshot, monkeypatch):
    _require_browser()
    from playwright.sync_api import sync_playwright

    from wycryst_assets.definitions import defs
    from wycryst_assets.partitions import targets_partitions

    timings = {}
    t0 = time.monotonic()
    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(small_snapshot))  # the server's release sensor reads it too
    _materialize_upstream(PARTITION)
    timings["upstream in-process"] = time.monotonic() - t0

    graph = defs.resolve_asset_graph()
    expected_keys = sorted(k.to_user_string() for k in graph.materializable_asset_keys)
    expected_edges = {(p.to_user_string(), k.to_user_string())
                      for k in graph.materializable_asset_keys for p in graph.get(k).parent_keys}
    with dg.DagsterInstance.get() as instance:
        partition_keys = instance.get_dynamic_partitions(targets_partitions.name)
    assert PARTITION in partition_keys

    shots = artifacts_dir()
    for name in SCREENSHOTS + ("failure.png", "page-errors.txt"):
        (shots / name).unlink(missing_ok=True)
    server = DagsterDev(wycryst_env["dagster_home"] / "dagster-dev.log", env=dict(os.environ))
    ok = False
    try:
        t = time.monotonic()
        server.start()
        timings["dagster dev up"] = time.monotonic() - t
        assert server.graphql("mutation { setNuxSeen }")["setNuxSeen"] is True

        t = time.monotonic()
        run_id = _launch_filtered_genes(server, PARTITION)
        status = wait_for_run(server, run_id, timeout=240)
        timings["run (queued -> success)"] = time.monotonic() - t
        assert status == "SUCCESS", f"run {run_id} ended {status}:\n{run_event_log(server, run_id)}"

        with dg.DagsterInstance.get() as instance:
            event = instance.get_latest_materialization_event(dg.AssetKey("filtered_genes"))
        assert event.run_id == run_id and event.asset_materialization.partition == PARTITION
        funnel_md = event.asset_materialization.metadata["funnel"].value

        t = time.monotonic()
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
            try:
                context = browser.new_context(base_url=server.url, viewport={"width": 1600, "height": 1000})
                context.set_default_timeout(UI_TIMEOUT_MS)
                page = context.new_page()
                page_errors = []
                page.on("pageerror", lambda exc: page_errors.append(str(exc)))
                try:
                    _check_asset_graph(page, expected_keys, expected_edges, shots)
                    _check_partitions_and_funnel(page, PARTITION, partition_keys, run_id, funnel_md, shots)
                except Exception:
                    page.screenshot(path=shots / "failure.png", full_page=True)
                    raise
                finally:
                    if page_errors:
                        (shots / "page-errors.txt").write_text("\n".join(page_errors))
            finally:
                browser.close()
        timings["browser checks"] = time.monotonic() - t
        ok = True
    finally:
        server.stop()
        shutil.copyfile(server.log_path, shots / "dagster-dev.log")
        timings["total"] = time.monotonic() - t0
        print("timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
        if not ok:
            print(f"--- dagster dev log (tail) ---\n{server.log()}")
    for name in SCREENSHOTS:
        assert (shots / name).stat().st_size > 10_000, f"screenshot {name} missing or empty"
