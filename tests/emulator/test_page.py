"""The status page in a real browser: headless Chromium (Debian's, driven by Playwright) against
the local stack's gateway, with an operator's token on every request as a proxy would send it.
It renders a running and a completed run with the numbers of the JSON status, escapes event
data (an error message quoting a hostile product id runs nothing), runs no script at all, and
refreshes itself only while a run is active."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.cloud import firestore
from playwright.sync_api import Browser, Dialog, Page, sync_playwright

from emulators.stack import Stack
from tests import data
from tests.conftest import ROOT, Mint
from tests.emulator.test_end_to_end import Api

pytestmark = pytest.mark.emulator

CHROMIUM = os.environ.get("BACKFILL_CHROMIUM", "/usr/bin/chromium")
# What the machine's closed network needs (no background calls home) and a root user allows.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
HOSTILE = "<img src=x onerror=alert(1)>"
# Where the README's screenshot comes from: BACKFILL_SCREENSHOTS=docs pytest tests/emulator/...
SHOTS = os.environ.get("BACKFILL_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: `make test` installs it"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, stack: Stack, clean: firestore.Client, mint: Mint) -> Iterator[Page]:
    stack.wait_idle(timeout=60)
    context = browser.new_context(extra_http_headers={"Authorization": f"Bearer {mint()}"},
                                  viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    dialogs: list[str] = []

    def refuse(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    opened.on("dialog", refuse)
    yield opened
    context.close()
    assert not dialogs, f"the page ran a script: {dialogs}"


def shot(page: Page, name: str) -> None:
    if SHOTS:
        page.screenshot(path=str(ROOT / SHOTS / name), full_page=True)


def texts(page: Page, selector: str) -> list[str]:
    return [text.strip() for text in page.locator(selector).all_inner_texts()]


def test_the_page_shows_a_running_and_a_completed_run_as_the_json_status_does(
        page: Page, stack: Stack, mint: Mint, clean: firestore.Client) -> None:
    api = Api(stack, mint)
    gateway = stack.env()["BACKFILL_GATEWAY_URL"]
    data.product(clean, "p1", 10)
    data.put(clean, *data.purchases(40, days=1, prefix="a"),
             data.purchase("hostile", "o-hostile", data.at(1, 900), lines=[(HOSTILE, 1)]))
    completed = api.finish(type="webhook_replay", startDate="2025-01-01",
                           endDate="2025-01-01")
    data.put(clean, *(data.purchase(f"b{n:03}", f"ob{n:03}", data.at(2 + n % 3, n), f"c{n % 5}")
                      for n in range(150)))
    running_id = api.start(type="webhook_replay", startDate="2025-01-02", endDate="2025-01-04",
                           maxEventsPerSecond=3)
    deadline = time.monotonic() + 60
    while (before := api.client.run(running_id))["status"] != "running" or not before["taken"]:
        assert time.monotonic() < deadline, before
        time.sleep(0.2)

    answer = page.goto(f"{gateway}/api/admin/dataMigrations/{running_id}")
    after = api.client.run(running_id)

    assert answer is not None and answer.status == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert "script-src" not in answer.headers["content-security-policy"]
    assert answer.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.locator("#status").inner_text() == "running"
    taken = int(page.locator("#taken").inner_text())
    assert before["taken"] <= taken <= after["taken"]
    assert int(page.locator("#total").inner_text()) == after["total"] == 150
    assert page.locator("#progress").get_attribute("max") == "150"
    assert page.locator("#chunks .chunk").count() == len(after["chunks"])
    assert page.locator('meta[http-equiv="refresh"]').count() == 1
    shot(page, "status-page-running.png")

    page.goto(f"{gateway}/api/admin/dataMigrations/{completed['migrationId']}")

    assert page.locator("#status").inner_text() == "completed"
    for key in ("total", "taken", "applied", "errors", "processed"):
        assert int(page.locator(f"#{key}").inner_text()) == completed[key], key
    assert texts(page, "#error-codes td") == ["product_not_found", "1"]
    assert f"Product not found: {HOSTILE}" in texts(page, "#first-errors td")
    assert page.locator("img").count() == 0  # shown as text, not parsed
    assert [state for state in page.locator("#chunks .chunk").evaluate_all(
        "cells => cells.map(cell => cell.dataset.state)")] == [
        chunk["state"] for chunk in completed["chunks"]]
    assert page.locator('meta[http-equiv="refresh"]').count() == 0
    report = page.request.get(page.locator("#csv").evaluate("link => link.href"))
    assert report.status == 200 and report.headers["content-type"].startswith("text/csv")
    assert "hostile,ON_ORDER_COMPLETED,product_not_found" in report.text()
    assert [move["to"] for move in completed["statusHistory"]] == texts(
        page, "#history td:nth-child(3)")
    shot(page, "status-page-run.png")

    page.goto(f"{gateway}/api/admin/dataMigrations")

    rows = {row.get_attribute("data-run"): row
            for row in page.locator("#runs tr[data-run]").all()}
    assert set(rows) == {completed["migrationId"], running_id}
    assert rows[completed["migrationId"]].locator(".status").inner_text() == "completed"
    assert rows[completed["migrationId"]].locator(".errors").inner_text() == "1"
    assert rows[running_id].locator(".status").inner_text() in ("running", "completed")
    assert page.locator('meta[http-equiv="refresh"]').count() == 1
    shot(page, "status-page-runs.png")
    if api.client.run(running_id)["status"] == "running":
        api.client.control(running_id, "cancel")
    stack.wait_idle(timeout=120)


def test_json_stays_the_answer_to_anything_but_a_browser(page: Page, stack: Stack,
                                                         mint: Mint) -> None:
    import httpx

    gateway = stack.env()["BACKFILL_GATEWAY_URL"]
    headers: dict[str, Any] = {"Authorization": f"Bearer {mint()}"}

    plain = httpx.get(f"{gateway}/api/admin/dataMigrations", headers=headers, timeout=30)
    html = httpx.get(f"{gateway}/api/admin/dataMigrations", timeout=30,
                     headers={**headers, "Accept": "text/html"})
    refused = httpx.get(f"{gateway}/api/admin/dataMigrations", timeout=30,
                        headers={"Accept": "text/html"})

    assert plain.headers["content-type"] == "application/json"
    assert html.headers["content-type"].startswith("text/html")
    assert refused.status_code == 401  # the page is behind the same OIDC check
