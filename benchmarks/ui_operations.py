"""The UI's own GraphQL operations: captured from a browser opening each page, then sent again.

The operations are not written here: Chromium opens each page of the installed UI (headless,
through Playwright) against one webserver and every GraphQL request it sends is kept, with its
variables, in the order sent. Sending them again to each webserver times what the server does
for each, without the browser's share; how long the page takes to settle in the browser is
measured too, from navigation to the last GraphQL answer.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests

CHROMIUM = "/usr/bin/chromium"
# The UI polls some queries every few seconds; an operation sent again within a page's visit is
# kept once.
QUIET_MS = 1500
SETTLE_TIMEOUT_SEC = 120


@dataclass(frozen=True)
class Page:
    name: str
    path: str
    # Clicks after the page settled, one after another, as an operator makes them (Playwright
    # selectors).
    clicks: tuple[str, ...] = ()


@dataclass
class Operation:
    page: str
    name: str
    body: dict

    @property
    def key(self) -> str:
        return f"{self.page}: {self.name}"

    @property
    def signature(self) -> str:
        return self.name + json.dumps(self.body.get("variables"), sort_keys=True)


def capture(base_url: str, pages: Sequence[Page]) -> list[Operation]:
    """Open each page once to warm the server, then again recording its operations; an
    operation several pages send (the same name and variables) is kept with the first."""
    from playwright.sync_api import sync_playwright

    operations: dict[str, Operation] = {}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            for page_spec in pages:
                visit(browser, base_url, page_spec)
                for operation in visit(browser, base_url, page_spec)[0]:
                    operations.setdefault(operation.signature, operation)
        finally:
            browser.close()
    return list(operations.values())


def settle_times(base_url: str, pages: Sequence[Page]) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            return {page.name: visit(browser, base_url, page)[1] for page in pages}
        finally:
            browser.close()


def visit(browser, base_url: str, page_spec: Page) -> tuple[list[Operation], float]:
    """The page's GraphQL operations (each name and variables once) and the seconds from
    navigation until the last answer, with no request pending for QUIET_MS."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    # The "Join the Dagster community" dialog stays away once this is set.
    context.add_init_script("localStorage.setItem('communityNux', JSON.stringify('1'))")
    page = context.new_page()
    seen: dict[str, Operation] = {}
    pending: set = set()
    last_answer = [time.perf_counter()]

    def sent(request) -> None:
        if request.method == "POST" and urlsplit(request.url).path.endswith("/graphql"):
            pending.add(request)
            body = request.post_data_json
            operation = Operation(page_spec.name, body.get("operationName") or "anonymous", body)
            seen.setdefault(operation.signature, operation)

    def answered(request) -> None:
        if request in pending:
            pending.discard(request)
            last_answer[0] = time.perf_counter()

    page.on("request", sent)
    page.on("requestfinished", answered)
    page.on("requestfailed", answered)
    try:
        started = last_answer[0] = time.perf_counter()
        page.goto(base_url + page_spec.path)
        _wait_quiet(page, pending, last_answer)
        seconds = last_answer[0] - started
        for selector in page_spec.clicks:
            page.locator(selector).first.click()
            clicked = last_answer[0] = time.perf_counter()
            _wait_quiet(page, pending, last_answer)
            seconds += last_answer[0] - clicked
    finally:
        context.close()
    return list(seen.values()), seconds


def _wait_quiet(page, pending: set, last_answer: list[float]) -> None:
    deadline = time.perf_counter() + SETTLE_TIMEOUT_SEC
    page.wait_for_timeout(200)
    while pending or time.perf_counter() - last_answer[0] < QUIET_MS / 1000:
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{page.url} still loading after {SETTLE_TIMEOUT_SEC} s")
        page.wait_for_timeout(100)


def send(graphql_url: str, operation: Operation) -> float:
    """Seconds for the server to answer ``operation``, which must not fail."""
    started = time.perf_counter()
    response = requests.post(graphql_url, json=operation.body, timeout=SETTLE_TIMEOUT_SEC)
    seconds = time.perf_counter() - started
    response.raise_for_status()
    errors = response.json().get("errors")
    if errors:
        raise RuntimeError(f"{operation.key} failed: {errors[0].get('message')}")
    return seconds
