"""The status page in headless Chromium against a real `ckptserve serve`: it shows each new
checkpoint within seconds, a corrupt one as a failure while the old version stays live, and the
admin buttons send the token. Skipped without Chromium and Playwright, except under `CI=true`."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pagekit import publish_corrupt
from serverkit import ADMIN_TOKEN, ServerProcess, seeded, state, torch_script

from ckptserve import publish

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
SHOWN_WITHIN = 10.0  # seconds; the page refreshes once a second


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium driven by Playwright (never a downloaded browser)."""
    missing = None
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        missing = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = missing or "Playwright is not installed (pip install 'ckptserve[dev]')"
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but {missing}")
        pytest.skip(missing)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 1100})
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    yield opened
    context.close()
    assert errors == [], f"the page's script raised: {errors}"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path, Path]]:
    """A real server with the admin token over a directory with one checkpoint (step 100)."""
    directory = tmp_path / "models"
    first = publish(torch_script(seeded(0)), directory, metadata={"step": 100})
    server = ServerProcess(
        [str(directory)], env={"CKPTSERVE_ADMIN_TOKEN": ADMIN_TOKEN}, log=tmp_path / "server.log"
    )
    try:
        server.wait_ready()
        yield server, directory, first
    finally:
        server.stop()


def shown(page: Any, selector: str, want: Callable[[str], bool], what: str,
          timeout: float = SHOWN_WITHIN, poke: Callable[[], Any] | None = None) -> str:  # fmt: skip
    """Poll the text of `selector` until `want(text)`; the failure shows the last text seen."""
    import time

    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        if poke is not None:
            poke()
        node = page.query_selector(selector)
        seen = node.inner_text() if node is not None else "<absent>"
        if want(seen):
            return seen
        page.wait_for_timeout(100)
    raise AssertionError(f"{what}: {selector} still shows {seen!r} after {timeout} s")


def test_page_shows_new_checkpoints_and_a_corrupt_one_as_a_failure(
    page: Any, served: tuple[ServerProcess, Path, Path], tmp_path: Path
) -> None:
    """Each new checkpoint appears within seconds with its step, and the actions it served
    appear under its own version; a corrupt one appears as a failed load with its reason while
    the previous version stays live."""
    server, directory, first = served
    model = "section.model[data-model='actor']"
    page.goto(server.url)
    shown(page, f"{model} .checkpoint", lambda t: t == first.name, "the first checkpoint")
    assert page.inner_text(f"{model} .step") == "100"
    lag = page.query_selector(f"{model} .lag")
    assert "warn" not in (lag.get_attribute("class") or ""), lag.inner_text()

    def predict() -> None:
        assert server.client.post("/rl/predict", json=state(0.3)).status_code == 200

    shown(page, f"{model} .legend", lambda t: first.name in t, "actions of the first", poke=predict)
    second = publish(torch_script(seeded(1)), directory, metadata={"step": 200})
    shown(page, f"{model} .checkpoint", lambda t: t == second.name, "the second checkpoint")
    assert page.inner_text(f"{model} .step") == "200"
    legend = shown(page, f"{model} .legend", lambda t: second.name in t and first.name in t,
                   "actions under both versions", poke=predict)  # fmt: skip
    assert legend.count("mean action") == 2, legend

    corrupt = publish_corrupt(directory)
    row = f"{model} .history tr[data-result='failed'], {model} .history tr[data-result='rejected']"
    failure = shown(page, row, lambda t: corrupt.name in t, "the failed load", poke=predict)
    assert "checkpoint" in failure.lower() or "format" in failure.lower(), failure
    assert page.inner_text(f"{model} .checkpoint") == second.name
    problem = page.inner_text(f"{model} .problem")
    assert corrupt.name in problem and page.is_visible(f"{model} .problem"), problem
    assert server.client.post("/rl/predict", json=state()).json()["checkpoint"] == second.name
    page.screenshot(path=str(tmp_path / "status_page.png"), full_page=True)
    assert (tmp_path / "status_page.png").stat().st_size > 10_000


def test_admin_buttons_appear_with_a_token_and_send_it(
    page: Any, served: tuple[ServerProcess, Path, Path], tmp_path: Path
) -> None:
    """Without a token the buttons are hidden; with one, pin serves the chosen checkpoint,
    unpin follows the newest again, and a wrong token is answered 401 on the page."""
    server, directory, first = served
    second = publish(torch_script(seeded(1)), directory, metadata={"step": 200})
    model = "section.model[data-model='actor']"
    page.goto(server.url)
    shown(page, f"{model} .checkpoint", lambda t: t == second.name, "the newest checkpoint")
    assert not page.is_visible(f"{model} button[data-action='pin']")

    page.fill("#token", ADMIN_TOKEN)
    assert page.is_visible(f"{model} button[data-action='pin']")
    page.select_option(f"{model} select.versions", first.name)
    page.click(f"{model} button[data-action='pin']")
    shown(page, f"{model} .admin-result", lambda t: t.startswith("pin: 200"), "the pin reply")
    shown(page, f"{model} .pinned", lambda t: t == first.name, "the pin")
    assert page.inner_text(f"{model} .checkpoint") == first.name
    assert server.client.get("/rl/status").json()["pinned"].endswith(first.name)

    page.click(f"{model} button[data-action='unpin']")
    shown(page, f"{model} .pinned", lambda t: t == "no", "the unpin")
    shown(page, f"{model} .checkpoint", lambda t: t == second.name, "the newest again")

    loads = server.client.get("/rl/status").json()["load_count"]
    page.click(f"{model} button[data-action='reload']")
    shown(page, f"{model} .admin-result", lambda t: t.startswith("reload: 200"), "the reload")
    assert server.client.get("/rl/status").json()["load_count"] == loads + 1

    page.fill("#token", "wrong")
    page.click(f"{model} button[data-action='reload']")
    shown(page, f"{model} .admin-result", lambda t: t.startswith("reload: 401"), "the refusal")
    page.fill("#token", "")
    assert not page.is_visible(f"{model} button[data-action='reload']")


@pytest.mark.parametrize(
    ("lag", "pinned", "shows", "css"),
    [(0.0, None, "0.0 s", "ok"), (0.004, None, "0.0 s", "ok"), (0.4, None, "0.4 s", ""),
     (30.0, None, "30.0 s", "warn"), (30.0, "actor_1.pt", "30.0 s", "muted")],
    ids=["zero", "rounds-to-zero", "loading", "behind", "pinned"],
)  # fmt: skip
def test_lag_is_a_warning_only_when_the_live_version_trails_a_newer_file(
    page: Any, shared_server: tuple[ServerProcess, Path],
    lag: float, pinned: str | None, shows: str, css: str,
) -> None:  # fmt: skip
    """`lag 0.0 s` is good news, never in the warning colour; a second or more behind while not
    pinned is the warning (the document is the server's, with the lag replaced)."""
    import json

    server, _ = shared_server

    def replace_lag(route: Any) -> None:
        doc = json.loads(route.fetch().text())
        for entry in doc["models"]:
            entry["lag_seconds"], entry["pinned"] = lag, pinned
        route.fulfill(status=200, content_type="application/json", body=json.dumps(doc))

    page.route("**/statusz", replace_lag)
    page.goto(server.url)
    node = "section.model[data-model='actor'] .lag"
    shown(page, node, lambda t: t == shows, f"lag {lag}")
    assert page.get_attribute(node, "class") == f"lag {css}".strip()
