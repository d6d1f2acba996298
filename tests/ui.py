"""Headless Chromium (Debian's `chromium` package, driven by Playwright) on the pages a user opens
after a scheduled run: the Prefect flow-run page, its `ganpipe-report` artifact, the MLflow run the
report links to, and the registered model with its `champion` alias.

The pages are single-page apps that render after their own API calls, so every check waits for the
element or text it needs (Playwright's `expect` retries until TIMEOUT_MS), never for a fixed time.
Without chromium (or the playwright package) the UI test skips, unless GANPIPE_REQUIRE_UI=1 (`make
test` sets it and installs chromium first): then it fails. Playwright's own browser download
(`playwright install`) is never used: the system's chromium is.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Page

TIMEOUT_MS = 60_000  # generous: CI machines are small and the servers share them with the run
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-background-networking",  # no calls home: the machines may have no internet
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
# The report's markdown, as Prefect's UI renders it on the artifact page.
REPORT = "article.markdown-renderer"


def chromium_path() -> str | None:
    """$GANPIPE_CHROMIUM, or `chromium` on PATH (Debian: /usr/bin/chromium)."""
    return os.environ.get("GANPIPE_CHROMIUM") or shutil.which("chromium")


@contextmanager
def browser_page() -> Iterator[Page]:
    """One headless Chromium page; skips (or, with GANPIPE_REQUIRE_UI=1, fails) without it."""
    missing = None
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        missing = "the playwright package (pip install -e '.[dev]')"
    path = chromium_path()
    if path is None:
        missing = "chromium (apt-get install chromium, or `make chromium`)"
    if missing:
        if os.environ.get("GANPIPE_REQUIRE_UI") == "1":
            pytest.fail(f"GANPIPE_REQUIRE_UI=1 but {missing} is not installed")
        pytest.skip(f"UI check needs {missing}; set GANPIPE_REQUIRE_UI=1 to fail instead")
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def check_prefect_flow_run(page: Page, ui: str, run_id: str, run_name: str, shots: Path) -> None:
    """The flow-run page: the run's name, its state Completed, its logs, and, on its Artifacts tab, the
    `ganpipe-report` card, which opens the artifact page (left open for check_prefect_report)."""
    from playwright.sync_api import expect

    page.goto(f"{ui}/runs/flow-run/{run_id}")
    expect(page.locator(".page-heading__crumbs")).to_contain_text(run_name)
    expect(page.locator(".state-badge").first).to_have_text("Completed")
    expect(page.get_by_text(f"Beginning flow run '{run_name}'")).to_be_visible()  # the Logs tab
    page.screenshot(path=shots / "prefect-flow-run.png")
    page.get_by_role("tablist").get_by_text("Artifacts", exact=True).click()
    card = page.locator(".artifact-card", has_text="ganpipe-report")
    expect(card).to_be_visible()
    page.screenshot(path=shots / "prefect-flow-run-artifacts.png")
    card.click()
    expect(page).to_have_url(re.compile(r"/artifacts/artifact/"))


def check_prefect_report(page: Page, markdown: str, shots: Path) -> str:
    """The artifact page (already open) renders the report: its title, the champion section, its
    images (check_report_images). Returns the report's link to the MLflow run."""
    from playwright.sync_api import expect

    report = page.locator(REPORT)
    expect(report.get_by_role("heading", name="ganpipe run")).to_be_visible()
    expect(report.get_by_role("heading", name=re.compile(r"^Champion:"))).to_be_visible()
    check_report_images(page, markdown)
    page.screenshot(path=shots / "prefect-report.png", full_page=True)
    link = report.locator("a[href*='/#/experiments/'][href*='/runs/']")  # the run page
    expect(link).to_have_count(1)
    return link.get_attribute("href")


def check_report_images(page: Page, markdown: str, require_one: bool = True) -> int:
    """Every image the report's markdown has is rendered and has loaded (naturalWidth > 0: a
    broken URL, or a server that refuses the request, leaves 0); with require_one, there is at
    least one (the report shows the sample grid: ganpipe/orchestration/report.py). Returns how many."""
    from playwright.sync_api import expect

    wanted = len(re.findall(r"!\[[^\]]*\]\(", markdown)) + markdown.count("<img")
    if require_one:
        assert wanted >= 1, "the report embeds no image"
    images = page.locator(f"{REPORT} img")
    expect(images).to_have_count(wanted)
    page.wait_for_function(
        "sel => [...document.querySelectorAll(sel)].every(i => i.complete)", arg=f"{REPORT} img"
    )
    loaded = images.evaluate_all("els => els.map(e => [e.src, e.naturalWidth])")
    assert all(width > 0 for _, width in loaded), f"images that did not load: {loaded}"
    return len(loaded)


def check_mlflow_run(page: Page, url: str, run_id: str, run_name: str, shots: Path) -> None:
    """The MLflow run page (the report's link): the run's name and id, status Finished, the
    champion metric, the promotion tag and the registered model."""
    from playwright.sync_api import expect

    page.goto(url)
    body = page.locator("body")
    expect(page.get_by_text(run_id, exact=True).first).to_be_visible()
    expect(page.get_by_role("heading", name=run_name).first).to_be_visible()
    for text in ("Finished", "classifier_fd", "promotion.decision", "ganpipe-generator"):
        expect(body).to_contain_text(text)
    page.screenshot(path=shots / "mlflow-run.png", full_page=True)


def check_mlflow_champion(
    page: Page, mlflow_uri: str, model: str, version: str, shots: Path
) -> None:
    """The registered model's page: the row of `version` shows the alias `champion`."""
    from playwright.sync_api import expect

    from ganpipe.mlflow_adapter.runinfo import ui_url

    page.goto(ui_url(mlflow_uri, f"models/{model}"))  # in the model-training view, as linked
    cell = page.get_by_role("cell", name=f"Version {version}", exact=True)
    row = page.get_by_role("row").filter(has=cell)
    expect(row).to_contain_text("champion")
    page.screenshot(path=shots / "mlflow-model.png")
