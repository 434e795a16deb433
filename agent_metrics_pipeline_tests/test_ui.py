"""The Dagster UI as a newcomer sees it after `make demo && make dev`, in a real browser.

The distribution's Chromium, driven by Playwright, headless, against `dg dev` on a free loopback
port over the demo's instance. Screenshots land in the test's folder; with
AGENT_METRICS_UPDATE_SCREENSHOTS=1 they also replace those the README and docs/operating.md
show (docs/screenshots/).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_metrics_pipeline.demo.runs import RANGE_DAYS
from agent_metrics_pipeline.demo.sample_calls import BROKEN_CALLS
from agent_metrics_pipeline.quality import checks
from agent_metrics_pipeline_tests.helpers import (
    DEV_INSTANCE_SETTINGS,
    REPO_ROOT,
    dagster_ui,
    graphql,
    run_ok,
    subprocess_env,
)

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
README_SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
RUN_SEC = 240
UI_WAIT_MS = 60_000


def ensure_chromium() -> Path:
    """The distribution's Chromium, installed on first use; a clear failure where it cannot be."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.fail(
            "The browser test needs the distribution's Chromium at /usr/bin/chromium and cannot "
            "install it here (no apt-get, or not root): run `apt-get install chromium`."
        )
    installed = subprocess.run(
        [apt, "install", "-y", "--no-install-recommends", "chromium"],
        capture_output=True,
        text=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    if installed.returncode != 0 or not CHROMIUM.exists():
        pytest.fail(
            "Installing Chromium for the browser test failed (`apt-get install chromium`):\n"
            + installed.stderr[-2000:]
        )
    return CHROMIUM


class Demo:
    def __init__(self, env: dict[str, str], url: str, today: dt.date, shots: Path) -> None:
        self.env, self.url, self.shots = env, url, shots
        yesterday = today - dt.timedelta(days=1)
        self.range_days = [
            (yesterday - dt.timedelta(days=offset)).isoformat()
            for offset in range(RANGE_DAYS, 0, -1)
        ]
        self.published = [*self.range_days, yesterday.isoformat()]
        self.broken_day = (yesterday - dt.timedelta(days=RANGE_DAYS + 1)).isoformat()
        self.unpublished_day = (yesterday - dt.timedelta(days=RANGE_DAYS + 4)).isoformat()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Iterator[Demo]:
    """`make demo`, then `make dev`: the demo into its instance, the UI over that instance."""
    ensure_chromium()
    root = tmp_path_factory.mktemp("ui")
    dagster_home = root / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(DEV_INSTANCE_SETTINGS, dagster_home / "dagster.yaml")
    env = subprocess_env(root / "home", dagster_home)
    run_ok([sys.executable, "-m", "agent_metrics_pipeline.demo"], env)
    today = dt.datetime.now(dt.UTC).date()
    name, value = (dagster_home / "demo.env").read_text().strip().split("=")
    env[name] = value  # what `make dev` reads from demo.env

    shots = root / "screenshots"
    shots.mkdir()
    with dagster_ui(["dg", "dev"], env, root) as url:
        yield Demo(env, url, today, shots)
    if os.environ.get("AGENT_METRICS_UPDATE_SCREENSHOTS") == "1":
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for shot in shots.glob("*.png"):
            shutil.copy(shot, README_SCREENSHOTS / shot.name)


@pytest.fixture(scope="module")
def page(demo):
    from playwright.sync_api import expect, sync_playwright

    # Assertions wait for the UI as long as actions do: a loaded machine renders slowly.
    expect.set_options(timeout=UI_WAIT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1440, "height": 900})
        context.set_default_timeout(UI_WAIT_MS)
        # The "Join the Dagster community" dialog stays away once this is set; Skip otherwise.
        context.add_init_script("localStorage.setItem('communityNux', JSON.stringify('1'))")
        # Nothing outside loopback (the UI asks for a telemetry script): fail fast.
        context.route(re.compile(r"^https?://(?!127\.0\.0\.1[:/])"), lambda route: route.abort())
        page = context.new_page()
        page.add_locator_handler(
            page.get_by_text("Join the Dagster community"),
            lambda: page.get_by_role("button", name="Skip").click(),
        )
        try:
            yield page
        except Exception:
            page.screenshot(path=str(demo.shots / "failure.png"))
            raise
        finally:
            browser.close()


def shot(page, path: Path, max_height: int = 3000) -> None:
    """Dagster scrolls inner panes, so a full-page shot shows only the viewport: grow it."""
    extra = page.evaluate(
        """() => Math.max(0, ...[...document.querySelectorAll('*')].map(e => {
            const s = getComputedStyle(e).overflowY;
            return /(auto|scroll)/.test(s) ? e.scrollHeight - e.clientHeight : 0; }))"""
    )
    size = page.viewport_size
    page.set_viewport_size(
        {"width": size["width"], "height": min(size["height"] + extra, max_height)}
    )
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(size)


def table_rows(table) -> list[list[str]]:
    """Top-level rows of a metadata table (values may hold nested Markdown tables)."""
    return table.locator("xpath=./tbody/tr").evaluate_all(
        "trs => trs.map(tr => [...tr.cells].map(td => td.innerText.trim()))"
    )


def test_asset_page_shows_the_definition(demo, page):
    from playwright.sync_api import expect

    page.goto(f"{demo.url}/assets/agent_metrics")
    metadata = page.locator("table").filter(
        has=page.locator("thead td", has_text=re.compile("^Key$"))
    )
    expect(metadata.locator("tbody tr").first).to_be_visible()
    keys = {row[0]: row[-1] for row in table_rows(metadata)}
    assert keys["source_table"] == "default.calls"
    assert keys["counted_statuses"] == "Answered"
    columns = page.locator("table").filter(has=page.locator("thead td", has_text="Column name"))
    assert [row[0] for row in table_rows(columns)][:5] == [
        "agent_id",
        "avg_call_length_sec",
        "p90_call_length_sec",
        "total_calls",
        "date",
    ]
    for label, value in (("Group", "call_center"), ("Owners", "data-platform")):
        panel = page.get_by_text(label, exact=True).locator("xpath=..")
        expect(panel).to_contain_text(value)
    shot(page, demo.shots / "asset.png")


def test_partitions_show_the_published_days_the_failed_day_and_per_day_metadata(demo, page):
    from playwright.sync_api import expect

    page.goto(f"{demo.url}/assets/agent_metrics?view=partitions")
    expect(page.get_by_text(re.compile(r"^Materialized \(\d+\)$"))).to_have_text(
        f"Materialized ({len(demo.published)})"
    )
    expect(page.get_by_text(re.compile(r"^Failed \(\d+\)$"))).to_have_text("Failed (1)")

    # A day of the range run carries its own metadata, not the range's.
    day = demo.range_days[len(demo.range_days) // 2]
    page.goto(f"{demo.url}/assets/agent_metrics?view=partitions&partition={day}")
    expect(page.locator(f'[data-tooltip="{day}"]').filter(has_text="Materialized")).to_be_visible()
    table = page.get_by_text("Metadata", exact=True).locator(
        "xpath=following-sibling::div[1]/table"
    )
    # The preview's Markdown renders after the rest of the table.
    preview = table.locator("xpath=./tbody/tr").filter(has_text="preview")
    expect(preview).to_contain_text("agent_id")
    metadata = {row[0]: row[1] for row in table_rows(table)}
    assert metadata["dagster/row_count"] == "300"
    assert metadata["run_days"] == f"{demo.range_days[0]}...{demo.range_days[-1]}"
    assert metadata["dagster/uri"].endswith(f"{day}/agent_metrics_{day}.csv")
    assert set(re.findall(r"\d{4}-\d{2}-\d{2}", metadata["preview"])) == {day}
    shot(page, demo.shots / "partitions.png")

    # The broken day is the one failed partition.
    page.goto(f"{demo.url}/assets/agent_metrics?view=partitions&status=FAILED")
    failed = page.locator('[data-tooltip] + div[style*="border-radius: 100%"]')
    expect(failed).to_have_count(1)
    expect(page.locator(f'[data-tooltip="{demo.broken_day}"]').first).to_be_visible()


CHECK_STATUSES = """
{
  assetNodeOrError(assetKey: {path: ["agent_metrics"]}) {
    ... on AssetNode {
      assetChecksOrError {
        ... on AssetChecks {
          checks {
            name
            executionForLatestMaterialization { status partition }
            partitionStatuses {
              ... on AssetCheckTimePartitionStatuses { ranges { startKey endKey status } }
            }
          }
        }
      }
    }
  }
}
"""


def days_by_status(ranges: list[dict]) -> dict[str, str]:
    """Each day the ranges cover, with its status."""
    statuses = {}
    for covered in ranges:
        day, last = (dt.date.fromisoformat(covered[key]) for key in ("startKey", "endKey"))
        while day <= last:
            statuses[day.isoformat()] = covered["status"]
            day += dt.timedelta(days=1)
    return statuses


def test_each_day_has_its_own_check_results_over_graphql(demo):
    found = graphql(f"{demo.url}/graphql", CHECK_STATUSES)["assetNodeOrError"]
    by_name = {check["name"]: check for check in found["assetChecksOrError"]["checks"]}
    assert set(by_name) == set(checks.CHECK_DESCRIPTIONS)
    failed_on_purpose = {checks.NO_NULLS, checks.NO_NEGATIVE_VALUES}
    for name, check in by_name.items():
        statuses = days_by_status(check["partitionStatuses"]["ranges"])
        expected = {day: "SUCCEEDED" for day in demo.published}
        expected[demo.broken_day] = "FAILED" if name in failed_on_purpose else "SUCCEEDED"
        assert statuses == expected, name
        # The latest materialization (yesterday's) passed every check.
        latest = check["executionForLatestMaterialization"]
        assert latest == {"status": "SUCCEEDED", "partition": demo.published[-1]}, name


def test_checks_tab_shows_each_days_result_with_the_failed_call_ids(demo, page):
    from playwright.sync_api import expect

    page.goto(f"{demo.url}/assets/agent_metrics?view=checks&checkDetail={checks.NO_NULLS}")
    header = page.get_by_text(re.compile(r"^Checks \(\d+\)$"))
    expect(header).to_have_text(f"Checks ({len(checks.CHECK_DESCRIPTIONS)})")
    # The check's own Partitions tab: one status per day.
    page.get_by_text("Automation history", exact=True).locator(
        "xpath=following::*[normalize-space(text())='Partitions'][1]"
    ).click()
    expect(page.get_by_text(re.compile(r"^Passed \(\d+\)$"))).to_have_text(
        f"Passed ({len(demo.published)})"
    )
    expect(page.get_by_text(re.compile(r"^Failed \(\d+\)$"))).to_have_text("Failed (1)")

    # The selected day's pane: its status, run, target materialization and metadata.
    pane = (
        page.locator("div")
        .filter(has=page.get_by_text("Latest execution", exact=True))
        .filter(has=page.get_by_text("Description", exact=True))
        .last
    )
    for day, status in ((demo.published[0], "Passed"), (demo.broken_day, "Failed")):
        page.get_by_text(day, exact=True).first.click()
        expect(pane).to_contain_text(re.compile(rf"^({day})+{status}Latest execution"))
    shot(page, demo.shots / "checks.png")
    row = page.locator("tr").filter(has=page.get_by_text("sample_call_ids", exact=True))
    row.get_by_text("[Show JSON]").click()
    for call_id, agent, _ in BROKEN_CALLS:
        if agent is None:
            expect(page.get_by_role("dialog").get_by_text(call_id)).to_be_visible()


def test_a_day_materialized_by_clicking_succeeds(demo, page):
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError
    from playwright.sync_api import expect

    key = demo.unpublished_day
    page.goto(f"{demo.url}/assets/agent_metrics")
    # The button's accessible name starts with its icon's label.
    page.get_by_role("button", name=re.compile(r"Materialize…$")).click()
    dialog = page.get_by_role("dialog").filter(has_text="Launch runs to materialize")
    box = dialog.locator("input[type=text]").first
    expect(box).not_to_have_attribute("placeholder", "Loading partition keys...")
    box.fill(key)
    box.press("Enter")
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    launch = dialog.get_by_role("button", name="Launch 1 run", exact=True)
    expect(launch).to_be_enabled()
    launch.click()
    toasts = page.locator('section[aria-label^="Notifications"]')
    expect(toasts.get_by_text(re.compile(r"Launched run [0-9a-f]{8}"))).to_be_visible()
    view = toasts.get_by_role("link", name="View", exact=True)
    href = view.get_attribute("href")
    try:
        view.click(timeout=5_000)
    except PlaywrightTimeoutError:  # the toast closes by itself
        page.goto(demo.url + href)
    expect(page).to_have_title(
        re.compile(r"\[(SUCCESS|FAILURE|CANCELED)\]"), timeout=RUN_SEC * 1000
    )
    assert page.title().endswith("[SUCCESS]"), page.title()
    shot(page, demo.shots / "run.png", max_height=1600)

    page.goto(f"{demo.url}/assets/agent_metrics?view=partitions&partition={key}")
    expect(page.locator(f'[data-tooltip="{key}"]').filter(has_text="Materialized")).to_be_visible()
    published = Path(demo.env["AGENT_METRICS_HOME"]) / "output" / "agent_metrics" / key
    assert (published / f"agent_metrics_{key}.csv").exists()
