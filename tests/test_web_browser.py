"""The site in headless Chromium while the seed's stories progress through real commits.

A real reconciler (the Harness) runs each of the four stories step by step: commits to a
real Git repository, jobs that download from a payload server whose gates the test opens,
reports through a loopback SMTP server. After every step the test reloads the page in
Chromium, with JavaScript switched off (the site must work without it), and asserts what a
reader sees: the state, the counts and progress, the job table, the report history; it
clicks from the list to the batch. Hostile titles, depositor names and file errors must
render as text, and the layout must hold (no horizontal scrolling of the page).

Screenshots go to test-artifacts/ (gitignored). Needs /usr/bin/chromium: skipped without
it, except under CI=true, where a missing browser fails the run.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reconciler.store.backends import BackendSettings, store_factory
from tests.fixtures import ADMIN, GitRepo, PayloadServer, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness
from web.app import build_server

pytestmark = pytest.mark.browser
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
REPO_URL = "https://git.example.org/ingest/batches"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]
P, C, F = "Processing", "Completed", "Failed"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {CHROMIUM} is missing: apt-get install chromium")
        pytest.skip(f"no {CHROMIUM}: apt-get install chromium to run the page tests")
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@dataclass
class Site:
    h: Harness
    base: str
    payloads: PayloadServer


@pytest.fixture
def site(git_repo: GitRepo, smtp: SmtpServer, payloads: PayloadServer,
         tmp_path: Path) -> Iterator[Site]:
    """A reconciler under test and the real site (werkzeug, threaded) on a free port."""
    state = tmp_path / "state"
    h = Harness(git_repo, state, smtp.hostport)
    server = build_server(store_factory(BackendSettings(state_dir=state))[0], "127.0.0.1:0", state,
                          config={"REFRESH_SECONDS": 600, "REPO_WEB_URL": REPO_URL,
                                  "JOB_PAGE_SIZE": 50})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Site(h, f"http://127.0.0.1:{server.server_port}", payloads)
    server.shutdown()
    server.server_close()
    h.close()


class Reader:
    """What a person sees on the pages (JavaScript off, as the site must allow)."""

    def __init__(self, browser: Any, site: Site, story: str, width: int = 1280) -> None:
        self.context = browser.new_context(java_script_enabled=False,
                                           viewport={"width": width, "height": 900})
        self.page = self.context.new_page()
        self.site = site
        self.story = story
        self.shots = 0
        self.dialogs: list[str] = []
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:  # a script ran: record it, then fail the test
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def close(self) -> None:
        self.context.close()

    def open(self, path: str) -> None:
        resp = self.page.goto(self.site.base + path)
        assert resp is not None and resp.status == 200, path
        self.assert_layout_holds()

    def reload(self) -> None:
        self.page.reload()
        self.assert_layout_holds()

    def assert_layout_holds(self) -> None:
        assert self.page.evaluate(
            "document.documentElement.scrollWidth <= window.innerWidth"), self.page.url
        assert self.page.locator("script").count() == 0
        assert self.dialogs == []

    def shot(self, step: str) -> None:
        self.shots += 1
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{self.story}-{self.shots:02d}-{step}.png"),
                             full_page=True)

    # --- the list
    def row(self, name: str) -> Any:
        return self.page.locator("table.batches tbody tr", has=self.page.locator(
            f'td.name a:text-is("{name}")'))

    def list_state(self, name: str) -> str:
        return str(self.row(name).locator(".state").inner_text()).split()[-1]

    def list_progress(self, name: str) -> str:
        return str(self.row(name).locator(".bar").get_attribute("aria-label"))

    # --- a batch
    def heading_state(self) -> str:
        return str(self.page.locator("h1 .state").inner_text()).split()[-1]

    def jobs(self) -> dict[str, tuple[str, int]]:
        out: dict[str, tuple[str, int]] = {}
        for row in self.page.locator("table.jobs tbody tr").all():
            cells = row.locator("td").all_inner_texts()
            out[cells[0].strip()] = (cells[2].split()[-1], int(cells[3]))
        return out

    def progress(self) -> str:
        return str(self.page.locator("dl.facts .bar").get_attribute("aria-label"))

    def reports(self) -> list[str]:
        return [s.strip() for s in self.page.locator("details.report .subject").all_inner_texts()]

    def refreshes(self) -> bool:
        return bool(self.page.locator('meta[http-equiv="refresh"]').count())

    def text(self, selector: str = "main") -> str:
        return str(self.page.inner_text(selector))


def submit_three(site: Site, *, fail_third: bool) -> None:
    items = [site.payloads.add(f"job{i}", f"payload {i}\n".encode(), gated=True)
             for i in (1, 2, 3)]
    if fail_third:  # same size, other bytes: the worker finds a digest mismatch
        site.payloads.files["job3"] = b"payload 9\n"
    site.h.repo.write("profiles/test.yaml", profile_doc(site.payloads.base))
    site.h.repo.write("batches/maps.yaml", batch_doc(items))
    site.h.repo.commit("depositor: submit manifest with 3 items")


def run_to_first_report(r: Reader, *, fail_third: bool) -> None:
    """The steps every story shares, each followed by a look at the pages."""
    h = r.site.h
    submit_three(r.site, fail_third=fail_third)
    h.sync()
    r.open("/")
    assert r.list_state("maps") == "Pending"
    assert r.list_progress("maps").startswith("0% finished")
    assert r.refreshes()  # a queued batch will move
    r.shot("list-pending")
    r.page.click('table.batches a:text-is("maps")')  # list -> detail
    assert r.page.url == r.site.base + "/batches/maps"
    assert r.heading_state() == "Pending"
    assert "No jobs yet" in r.text()
    h.reconcile()
    r.reload()
    assert r.heading_state() == P
    h.reconcile()
    r.reload()
    assert r.jobs() == {"job1": ("Pending", 1), "job2": ("Pending", 1), "job3": ("Pending", 1)}
    h.until(lambda: set(h.jobs("maps").values()) == {P}, "every job to start")
    r.reload()
    assert r.jobs() == {"job1": (P, 1), "job2": (P, 1), "job3": (P, 1)}
    assert r.progress() == "0% finished: 0 completed, 0 failed, 3 processing, of 3 jobs"
    assert r.refreshes()
    r.shot("detail-processing")
    r.site.payloads.release("job2")
    h.until(lambda: h.jobs("maps")["job2"] == C, "job2 to complete")
    r.reload()
    assert r.jobs()["job2"] == (C, 1) and r.heading_state() == P
    assert r.progress() == "33% finished: 1 completed, 0 failed, 2 processing, of 3 jobs"
    r.site.payloads.release("job3")
    third = F if fail_third else C
    h.until(lambda: h.jobs("maps")["job3"] == third, f"job3 to be {third}")
    r.open("/")
    assert r.list_state("maps") == P
    assert r.list_progress("maps").startswith("67% finished")
    r.shot("list-two-done")
    r.open("/batches/maps")
    assert r.jobs() == {"job1": (P, 1), "job2": (C, 1), "job3": (third, 1)}
    if fail_third:
        assert "digest mismatch" in r.text("table.jobs")
    r.site.payloads.release("job1")
    h.until(lambda: h.jobs("maps")["job1"] == C, "job1 to complete")
    r.reload()
    assert r.heading_state() == "Reporting"
    assert "No report yet" in r.text("main")
    h.reconcile()
    assert h.rec.deliver() == 1
    r.reload()
    verdict = F if fail_third else C
    assert r.heading_state() == verdict
    assert r.progress().startswith("100% finished: " + ("2 completed, 1 failed" if fail_third
                                                    else "3 completed, 0 failed"))
    subject = ("Ingest: FAIL -- Submission Failed: maps" if fail_third
               else "Ingest: OK -- Submission Processed: maps")
    assert r.reports() == [subject]
    report = r.text("details.report")
    assert "To: jane@example.org" in report and "First report of this batch." in report
    assert "emailed" in report
    assert not r.refreshes()  # settled: nothing moves without a commit
    r.shot("detail-reported")


def test_story_successful_batch(browser: Any, site: Site) -> None:
    r = Reader(browser, site, "story1-successful")
    run_to_first_report(r, fail_third=False)
    r.open("/")
    assert r.list_state("maps") == C
    assert "Completed 1" in r.text("nav.chips")
    r.close()


def test_story_failed_batch_then_deleted(browser: Any, site: Site) -> None:
    r = Reader(browser, site, "story2-failed-deleted")
    run_to_first_report(r, fail_third=True)
    r.page.click("nav.chips a:has-text('Failed')")  # filter the jobs (a plain link)
    assert r.jobs() == {"job3": (F, 1)}
    site.h.repo.remove("batches/maps.yaml")
    site.h.repo.commit("admin: delete maps", who=ADMIN)
    site.h.sync()
    site.h.reconcile()
    r.open("/batches/maps")
    assert r.heading_state() == "Deleted"
    assert "the batch file was removed" in r.text(".banner")
    assert "Deleted" in r.text("ol.timeline")
    r.shot("detail-deleted")
    r.open("/?state=Deleted")
    assert r.list_state("maps") == "Deleted"
    r.close()


def test_story_failed_batch_with_successful_retry(browser: Any, site: Site) -> None:
    r = Reader(browser, site, "story3-retry-ok")
    h = site.h
    run_to_first_report(r, fail_third=True)
    site.payloads.files["job3"] = b"payload 3\n"  # the depositor uploaded it again
    h.repo.edit_batch("batches/maps.yaml", restarts={"job3": 1})
    h.sync()
    h.reconcile()
    r.reload()
    assert r.heading_state() == F  # a restart does not change the batch state
    assert r.jobs()["job3"][1] == 2
    assert "Restarted" in r.text("ol.timeline")
    h.until(lambda: h.jobs("maps")["job3"] == C, "job3 attempt 2 to complete")
    r.reload()
    assert r.jobs() == {"job1": (C, 1), "job2": (C, 1), "job3": (C, 2)}
    assert r.heading_state() == F and len(r.reports()) == 1
    h.repo.edit_batch("batches/maps.yaml", state="UpdateReporting")
    h.sync()
    h.reconcile()
    r.reload()
    assert r.heading_state() == "UpdateReporting"
    assert r.refreshes()
    h.reconcile()
    assert h.rec.deliver() == 1
    r.reload()
    assert r.heading_state() == C
    assert r.reports() == ["Ingest: OK -- Submission Updated: maps",
                           "Ingest: FAIL -- Submission Failed: maps"]
    newest = r.text("details.report[open]")
    assert "Changed since the previous report (1):" in newest
    assert "job3: Failed → Completed" in newest
    timeline = r.text("ol.timeline")
    assert timeline.index("Completed") < timeline.index("UpdateReporting")  # newest first
    link = r.page.locator("ol.timeline li").first.locator("a").first
    assert re.fullmatch(REPO_URL + "/commit/[0-9a-f]{40}", str(link.get_attribute("href")))
    r.shot("detail-updated")
    # find and filter with the GET form (no script needed)
    r.page.fill("input[name=q]", "job3")
    r.page.click("form.search button")
    assert r.jobs() == {"job3": (C, 2)}
    r.close()


def test_story_failed_batch_with_unsuccessful_retry(browser: Any, site: Site) -> None:
    r = Reader(browser, site, "story4-retry-fails")
    h = site.h
    run_to_first_report(r, fail_third=True)
    h.repo.edit_batch("batches/maps.yaml", restarts={"job3": 1})
    h.sync()
    h.reconcile()
    h.until(lambda: h.jobs("maps")["job3"] == F and h.attempts("maps")["job3"] == 2,
            "job3 attempt 2 to fail")
    r.reload()
    assert r.jobs()["job3"] == (F, 2) and r.heading_state() == F
    h.repo.edit_batch("batches/maps.yaml", state="UpdateReporting")
    h.sync()
    h.reconcile()
    h.reconcile()
    assert h.rec.deliver() == 0  # nothing changed: no email
    r.reload()
    assert r.heading_state() == F
    assert r.reports() == ["Ingest: FAIL -- Submission Updated: maps",
                           "Ingest: FAIL -- Submission Failed: maps"]
    newest = r.text("details.report[open]")
    assert "Nothing changed since the previous report, so no email was sent." in newest
    assert "not emailed" in newest
    r.shot("detail-no-change")
    r.close()


HOSTILE = '<script>alert("x")</script> "quoted" \'single\' <img src=x onerror=alert(1)> '
LONG = "W" * 300


def test_hostile_text_is_escaped_and_the_layout_holds(browser: Any, site: Site) -> None:
    h = site.h
    items = [site.payloads.add(f"it-{i}", f"x{i}\n".encode()) for i in range(3)]
    items[0]["title"] = HOSTILE + LONG
    items[1]["title"] = "A title with spaces " * 15
    items[2]["id"] = "i" * 128  # the longest id the schema allows
    doc = batch_doc(items)
    doc["spec"]["depositor"]["name"] = (HOSTILE + LONG)[:250]
    h.repo.write("profiles/test.yaml", profile_doc(site.payloads.base))
    h.repo.write("batches/hostile.yaml", doc)
    broken = "b" * 60
    h.repo.write(f"batches/{broken}.yaml",
                 "kind: Batch\nspec: {profile: test, depositor: {email: '<img src=x "
                 "onerror=alert(2)>'}, manifest: {items: []}, '<script>alert(3)</script>': 1}\n")
    h.repo.commit("hostile input")
    h.until_idle()
    # JavaScript on here, so that a script that got through would show as a dialog
    for width in (1280, 375):
        context = browser.new_context(viewport={"width": width, "height": 900})
        page = context.new_page()
        dialogs: list[str] = []

        def dialog(d: Any, seen: list[str] = dialogs) -> None:
            seen.append(d.message)
            d.dismiss()

        page.on("dialog", dialog)
        for path, name in (("/", "list"), ("/batches/hostile", "detail"),
                           (f"/batches/{broken}", "broken")):
            page.goto(site.base + path)
            assert page.locator("script").count() == 0, path
            assert page.locator("main img").count() == 0, path
            assert page.evaluate(
                "document.documentElement.scrollWidth <= window.innerWidth"), (path, width)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / f"hostile-{name}-{width}.png"),
                            full_page=True)
        page.goto(site.base + "/batches/hostile")
        assert '<script>alert("x")</script>' in page.inner_text("table.jobs")
        assert "<img src=x onerror=alert(1)>" in page.inner_text("dl.facts")
        assert "i" * 128 in page.inner_text("table.jobs")
        page.goto(site.base + "/")
        errors = page.inner_text("#file-errors")
        assert "<img src=x onerror=alert(2)>" in errors and "<script>alert(3)</script>" in errors
        assert dialogs == []
        context.close()
