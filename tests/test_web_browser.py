"""The site in headless Chromium while the seed story progresses through real commits."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.local import SqliteStore
from tests.fixtures import ADMIN, GitRepo, PayloadServer, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness
from web.app import serve

pytestmark = pytest.mark.browser
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
HOSTILE = '<script>alert("x")</script> "quoted" \'single\' ' + "W" * 300


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but /usr/bin/chromium is missing: scripts/setup-test-parts "
                        "installs it")
        pytest.skip("no /usr/bin/chromium (apt-get install chromium) for the page tests")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-quic", "--no-first-run", "--disable-component-update",
            "--disable-sync"])
        yield b
        b.close()


@pytest.fixture
def site(git_repo: GitRepo, smtp: SmtpServer, tmp_path: Path) -> Iterator[tuple[Harness, str]]:
    h = Harness(git_repo, tmp_path / "state", smtp.hostport)
    state = tmp_path / "state"
    server = serve(lambda: SqliteStore(state / "batchq.sqlite3"), "127.0.0.1:0", state,
                   block=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield h, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    h.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def no_overflow(page: Any) -> bool:
    return bool(page.evaluate(
        "document.documentElement.scrollWidth <= window.innerWidth + 1"))


def test_walk_the_failed_then_retried_story(browser: Any, site: tuple[Harness, str],
                                            payloads: PayloadServer) -> None:
    h, base = site
    items = [payloads.add(f"job{i}", f"payload {i}\n".encode(), gated=True) for i in (1, 2, 3)]
    payloads.files["job3"] = b"payload 9\n"
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/maps.yaml", batch_doc(items))
    h.repo.commit("submit")
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))

    h.sync()
    page.goto(base + "/")
    assert "Pending" in page.inner_text("table.batches")
    h.until(lambda: set(h.jobs("maps").values()) == {"Processing"}, "jobs to start")
    page.reload()
    row = page.inner_text("table.batches tbody tr")
    assert "maps" in row and "Processing" in row and "3 (0 ok, 0 failed)" in row
    assert page.locator('meta[http-equiv="refresh"]').count() == 1  # active: refreshes
    shot(page, "01-list-processing")

    page.click("text=maps")
    assert page.url.endswith("/batches/maps")
    assert page.inner_text("h1").startswith("maps")
    payloads.release("job2", "job3")
    h.until(lambda: h.jobs("maps")["job3"] == "Failed", "job3 to fail")
    page.reload()
    jobs = page.inner_text("table.jobs")
    assert "job2" in jobs and "digest mismatch" in jobs
    shot(page, "02-detail-partial")

    payloads.release("job1")
    h.until(lambda: h.state("maps") == "Failed", "the batch to fail")
    h.rec.deliver()
    page.reload()
    assert "Failed" in page.inner_text("h1")
    assert "Ingest: FAIL -- Submission Failed: maps" in page.inner_text("#reports ~ details")
    assert page.locator('meta[http-equiv="refresh"]').count() == 0  # settled: no refresh
    shot(page, "03-detail-failed")

    payloads.files["job3"] = b"payload 3\n"
    h.repo.edit_batch("batches/maps.yaml", who=ADMIN, restarts={"job3": 1},
                      state="UpdateReporting")
    h.sync()
    h.until(lambda: h.state("maps") == "Completed", "the update report")
    h.rec.deliver()
    page.reload()
    assert "Completed" in page.inner_text("h1")
    first = page.locator("details.report").first
    assert "Ingest: OK -- Submission Updated: maps" in first.inner_text()
    assert "Changed since the previous report: job3" in first.inner_text()
    timeline = page.inner_text("ol.timeline")
    assert "UpdateReporting" in timeline and "Restarted" in timeline
    page.select_option("select[name=state]", "Completed")
    page.click("button:has-text('Filter')")
    assert page.locator("table.jobs tbody tr").count() == 3
    shot(page, "04-detail-completed")
    assert no_overflow(page)
    assert dialogs == []


def test_hostile_text_is_escaped_and_the_layout_holds(browser: Any, site: tuple[Harness, str],
                                                      payloads: PayloadServer) -> None:
    h, base = site
    item = payloads.add("safe-id", b"x\n")
    item["title"] = HOSTILE
    doc = batch_doc([item])
    doc["spec"]["depositor"]["name"] = HOSTILE[:250]  # the schema allows 256
    h.repo.write("profiles/test.yaml", profile_doc(payloads.base))
    h.repo.write("batches/hostile.yaml", doc)
    h.repo.write("batches/" + "l" * 60 + ".yaml",
                 "kind: Batch\nspec: {profile: test, depositor: {email: '<img src=x "
                 "onerror=alert(2)>'}, manifest: {items: []}, '<b>x</b>': 1}\n")
    h.repo.commit("hostile input")
    h.until_idle()
    page = browser.new_page(viewport={"width": 1024, "height": 800})
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    for path in ("/", "/batches/hostile", "/batches/" + "l" * 60):
        page.goto(base + path)
        assert page.locator("script").count() == 0
        assert page.locator("img").count() == 0
        assert no_overflow(page), path
    page.goto(base + "/batches/hostile")
    assert '<script>alert("x")</script>' in page.inner_text("table.jobs")
    assert HOSTILE[:60] in page.inner_text("dl.facts")
    shot(page, "05-hostile-detail")
    page.goto(base + "/")
    assert "<img src=x onerror=alert(2)>" in page.inner_text("body") or (
        "cannot be used" in page.inner_text("body"))
    shot(page, "06-hostile-list")
    page.set_viewport_size({"width": 420, "height": 800})
    page.goto(base + "/batches/hostile")
    assert no_overflow(page)
    shot(page, "07-hostile-narrow")
    assert dialogs == []
