"""The site through Flask's test client, over a store that holds a reconciler's story.

Every route, its filters and paging bounds, 404s and 400s, the JSON shapes, /healthz
against a heartbeat file the test writes, /metrics parsed with prometheus_client, the
webhook's signature checks, the serve() entry points, and the same story read from both
backends (the Kubernetes run needs the test control plane and skips without it).

Most tests read a story seeded in-process (`seed_story`: the real sync and controller on a
SQLite store, jobs finished as the local runner finishes them; milliseconds). A few run
the real reconciler on a real Git repository (`reconciled`), and one of them checks that
the site shows the seeded story exactly as it shows the real one, so the seed stays true.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from reconciler.control.controller import Controller
from reconciler.control.notify import deliver
from reconciler.domain.model import Batch, BatchStatus, Item
from reconciler.domain.states import BatchState, JobState
from reconciler.source.sync import RepoState, apply_sync
from reconciler.store.backends import BackendSettings, local_db_path, store_factory
from reconciler.store.base import Delivery, Event, RecipientState, SyncState
from reconciler.store.local.sqlite import SqliteStore
from reconciler.support.heartbeat import Heartbeat
from tests.fixtures import ADMIN, GitRepo, PayloadServer, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness
from tests.unit.world import MemoryRepo
from web.app import build_server, create_app

REPO_URL = "https://git.example.org/ingest/batches"
BROKEN = "kind: Batch\nspec: [\n"
# The story: good (ok0..ok2) completes; mixed (bad1, bad2) fails because bad2's payload is
# not what its digest says, then an admin asks for an update report and nothing changed;
# a batch file that never parsed. Payloads: (what the manifest's digest is of, what is served).
PAYLOADS = {**{f"ok{i}": (f"ok {i}\n".encode(),) * 2 for i in range(3)},
            "bad1": (b"b\n", b"b\n"), "bad2": (b"c\n", b"x\n")}


def item_doc(base: str, name: str) -> dict[str, Any]:
    """The manifest item for a payload, as `PayloadServer.add` gives it."""
    body = PAYLOADS[name][0]
    return {"id": name, "url": base + name, "title": f"Title of {name}", "size": len(body),
            "digest": {"algorithm": "sha256", "value": hashlib.sha256(body).hexdigest()}}


def worker_verdict(item: str) -> tuple[int, str]:
    """What the worker says about an item's payload: (exit code, its one-line reason)."""
    wanted, served = (hashlib.sha256(b).hexdigest() for b in PAYLOADS[item])
    if wanted == served:
        return 0, ""
    return 1, f"digest mismatch: expected sha256 {wanted}, got {served}"


@dataclass
class Site:
    """A state dir holding the story, and its store."""

    state_dir: Path
    store: SqliteStore

    def batch(self, name: str) -> Batch:
        b = self.store.get_batch(name)
        assert b is not None, f"no batch {name}"
        return b


def seed_story(state_dir: Path, base: str = "http://127.0.0.1:9/") -> Site:
    """The story as a reconciler leaves it, made in-process: commits through the real sync,
    passes of the real controller, jobs started and finished through the store's runner
    methods with the worker's verdicts, reports through the real outbox, the heartbeat
    a loop writes. No Git, no worker process, no SMTP: milliseconds."""
    store = SqliteStore(local_db_path(state_dir))
    repo, controller, beat = MemoryRepo(), Controller(store, storage_root=state_dir), \
        Heartbeat(state_dir)

    def commit(changes: dict[str, Any], by: str) -> RepoState:
        result = repo.commit(changes, by)
        with store.transaction():  # what Reconciler.sync writes
            state = apply_sync(store, result)
            sync = store.load_sync_state()
            sync.synced_commit, sync.sync_error = result.head, ""
            store.save_sync_state(sync)
        beat.beat(sync=True, head=result.head)
        return state

    def until_idle(state: RepoState) -> None:
        for _ in range(20):
            for row in store.jobs_in_state(JobState.PENDING):  # the local runner's part
                store.mark_job_started(row["name"], pid=0)
                store.mark_job_finished(row["name"], *worker_verdict(row["item"]))
            progressed = controller.reconcile_all(state, None)
            deliver(store, smtp=None, outbox_dir=state_dir / "outbox")
            if not progressed and not store.count_active_jobs():
                beat.beat(interval=0.2, duration=0.05)
                return
        raise AssertionError("the seeded story does not settle")

    mixed = batch_doc([item_doc(base, "bad1"), item_doc(base, "bad2")])
    until_idle(commit({
        "profiles/test.yaml": profile_doc(base),
        "batches/good.yaml": batch_doc([item_doc(base, f"ok{i}") for i in range(3)]),
        "batches/mixed.yaml": mixed}, "Jane Depositor <jane@example.org>: two batches"))
    mixed["spec"]["state"] = "UpdateReporting"
    until_idle(commit({"batches/broken.yaml": BROKEN, "batches/mixed.yaml": mixed},
                      "Alex Admin <admin@example.org>: admin: batches/mixed.yaml:"
                      " {'state': 'UpdateReporting'}"))
    return Site(state_dir, store)


@pytest.fixture
def filled(tmp_path: Path) -> Iterator[Site]:
    """Two finished batches (good: Completed; mixed: Failed, then an update report with
    nothing changed) and a batch file that does not parse; seeded (see `seed_story`)."""
    site = seed_story(tmp_path / "state")
    yield site
    site.store.close()


@pytest.fixture
def reconciled(git_repo: GitRepo, smtp: SmtpServer, payloads: PayloadServer,
               tmp_path: Path) -> Iterator[Harness]:
    """The same story told by a real reconciler: Git, worker processes, SMTP."""
    h = Harness(git_repo, tmp_path / "state", smtp.hostport)
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    for name, (body, served) in PAYLOADS.items():
        payloads.add(name, body)
        payloads.files[name] = served
    git_repo.write("batches/good.yaml",
                   batch_doc([item_doc(payloads.base, f"ok{i}") for i in range(3)]))
    git_repo.write("batches/mixed.yaml",
                   batch_doc([item_doc(payloads.base, n) for n in ("bad1", "bad2")]))
    git_repo.commit("two batches")
    h.until_idle()
    git_repo.write("batches/broken.yaml", BROKEN)
    git_repo.edit_batch("batches/mixed.yaml", state="UpdateReporting")
    h.until_idle()
    yield h
    h.close()


def make_app(state: Path, **extra: Any) -> Flask:
    triggered: list[int] = []
    config: dict[str, Any] = {
        "STORE_FACTORY": store_factory(BackendSettings(state_dir=state))[0],
        "STATE_DIR": state, "WEBHOOK_SECRET": "s3cret", "GITLAB_TOKEN": "gl-token",
        "TRIGGER_SYNC": lambda: triggered.append(1), "PAGE_SIZE": 2, "JOB_PAGE_SIZE": 2,
        "REPO_WEB_URL": REPO_URL, "TESTING": True,
    }
    config.update(extra)
    app = create_app(config)
    app.config["TRIGGERED"] = triggered
    return app


@pytest.fixture
def app(filled: Site) -> Flask:
    return make_app(filled.state_dir)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def html(client: FlaskClient, path: str, status: int = 200) -> str:
    resp = client.get(path)
    assert resp.status_code == status, (path, resp.status_code)
    return resp.get_data(as_text=True)


# --- the list


def test_list_shows_states_counts_and_file_errors(client: FlaskClient) -> None:
    page = html(client, "/")
    assert 'aria-current="page">All <span class="n">3</span>' in page
    assert ">Completed <span class=\"n\">1</span>" in page
    assert ">Failed <span class=\"n\">1</span>" in page
    assert "1 file in the repository cannot be used" in page
    assert "batches/broken.yaml" in page
    assert "Page 1 of 2" in page and 'rel="next"' in page and 'rel="prev"' not in page
    assert 'role="img" aria-label="100% finished: 1 completed, 1 failed, 0 processing' in page
    assert "Jane Depositor" in page and "jane@example.org" in page
    assert '<meta http-equiv="refresh"' not in page  # nothing is moving
    assert "Last Git sync" in page


def test_list_filter_and_paging_bounds(client: FlaskClient) -> None:
    failed = html(client, "/?state=Failed")
    assert '>mixed</a>' in failed and '>good</a>' not in failed
    assert "Page 1 of" not in failed  # one row: no paging
    assert html(client, "/?state=Deleted").count("No batches in state Deleted") == 1
    bad = html(client, "/?state=Nonsense", 400)
    assert "unknown state" in bad and "All batches" in bad
    last = html(client, "/?page=99")
    assert "Page 2 of 2" in last and 'rel="next"' not in last
    for page in ("0", "-3", "abc", ""):
        assert "Page 1 of 2" in html(client, f"/?page={page}")


def test_list_is_newest_activity_first(client: FlaskClient, filled: Site) -> None:
    names = [b["name"] for b in client.get("/api/batches?page=1").get_json()["batches"]]
    names += [b["name"] for b in client.get("/api/batches?page=2").get_json()["batches"]]
    by_activity = sorted(filled.store.list_batches(), key=lambda b: (-b.updated_at, b.name))
    assert names == [b.name for b in by_activity]
    assert sorted(names) == ["broken", "good", "mixed"]


# --- one batch


def test_detail_jobs_timeline_and_reports(client: FlaskClient, filled: Site) -> None:
    page = html(client, "/batches/mixed")
    assert "<code title=" in page and ">bad1</code>" in page
    assert "digest mismatch" in page
    assert "Ingest: FAIL -- Submission Failed: mixed" in page
    assert "Ingest: FAIL -- Submission Updated: mixed" in page
    assert "Nothing changed since the previous report, so no email was sent." in page
    assert "First report of this batch." in page
    rev = filled.batch("mixed").source_revision
    assert f'href="{REPO_URL}/commit/{rev}"' in page
    assert f'href="{REPO_URL}/blob/{rev}/batches/mixed.yaml"' in page
    first_rev = filled.store.list_events("mixed")[0].revision
    assert first_rev != rev
    assert f'href="{REPO_URL}/blob/{first_rev}/batches/mixed.yaml">file at that commit' in page
    assert page.index("UpdateReporting") < page.index("SpecApplied")  # newest first
    assert ">Failed <span class=\"n\">1</span>" in page  # job filter chips with counts
    assert html(client, "/batches/nope", 404).count("There is no batch named") == 1


def test_detail_filters_search_and_paging(client: FlaskClient) -> None:
    only_failed = html(client, "/batches/mixed?state=Failed")
    assert ">bad2</code>" in only_failed and ">bad1</code>" not in only_failed
    search = html(client, "/batches/good?q=ok2")
    assert ">ok2</code>" in search and ">ok1</code>" not in search
    by_title = html(client, "/batches/good?q=Title+of+ok1")
    assert ">ok1</code>" in by_title and ">ok2</code>" not in by_title
    assert "No job matches." in html(client, "/batches/good?q=nothing-like-it")
    first = html(client, "/batches/good")
    assert ">ok0</code>" in first and ">ok2</code>" not in first and "Page 1 of 2" in first
    page2 = html(client, "/batches/good?page=2")
    assert ">ok2</code>" in page2 and "Page 2 of 2" in page2
    assert "Page 2 of 2" in html(client, "/batches/good?page=500")
    assert "Page 1 of 2" in html(client, "/batches/good?page=-1")
    assert "unknown job state" in html(client, "/batches/good?state=Bogus", 400)
    # the paging links keep the filter
    assert 'href="?q=ok&amp;page=2#jobs"' in html(client, "/batches/good?q=ok")


def test_report_email_as_sent(client: FlaskClient) -> None:
    resp = client.get("/batches/mixed/reports/1.eml")
    assert resp.status_code == 200 and resp.mimetype == "message/rfc822"
    assert b"Ingest: FAIL -- Submission Failed: mixed" in resp.data
    assert "attachment" in resp.headers["Content-Disposition"]
    assert client.get("/batches/mixed/reports/9.eml").status_code == 404
    assert client.get("/batches/nope/reports/1.eml").status_code == 404


def test_broken_file_page(client: FlaskClient) -> None:
    page = html(client, "/batches/broken")
    assert "cannot be used" in page and "no version of it was ever valid" in page


# --- JSON


def test_api_list_shape(client: FlaskClient) -> None:
    listing = client.get("/api/batches?state=Completed").get_json()
    assert {"total", "page", "pages", "pageSize", "state", "counts", "site",
            "batches"} <= listing.keys()
    assert listing["total"] == 1 and listing["pages"] == 1 and listing["state"] == "Completed"
    good = listing["batches"][0]
    assert good["name"] == "good" and good["progress"] == 100 and good["jobs"] == 3
    assert good["depositor"] == {"name": "Jane Depositor", "email": "jane@example.org"}
    assert good["counts"] == {"Completed": 3} and good["profile"] == "test"
    assert good["updatedAt"].endswith("Z") and good["active"] is False
    site = listing["site"]
    assert list(site["fileErrors"]) == ["batches/broken.yaml"]
    assert site["lastSync"].endswith("Z") and site["syncError"] == ""
    assert len(site["head"]) == 40
    everything = client.get("/api/batches").get_json()
    assert everything["counts"] == {"Completed": 1, "Failed": 1, "Pending": 1}
    assert everything["pages"] == 2 and len(everything["batches"]) == 2


def test_api_detail_and_jobs_shape(client: FlaskClient) -> None:
    detail = client.get("/api/batches/mixed").get_json()
    assert detail["state"] == "Failed" and detail["counts"] == {"Completed": 1, "Failed": 1}
    assert [r["kind"] for r in detail["reports"]] == ["initial", "update"]
    first, update = detail["reports"]
    assert first["delivered"] is True and first["previous"] is None
    assert update["emailed"] is False and update["changesTotal"] == 0
    assert update["previous"] == first["id"] and update["recipients"] == ["jane@example.org"]
    assert "Jobs: 2   Completed: 1   Failed: 1" in update["body"]
    assert [e["reason"] for e in detail["timeline"]][:4] == ["SpecApplied", "Processing",
                                                               "JobFailed", "Reporting"]
    assert all(len(e["revision"]) == 40 for e in detail["timeline"])
    jobs = detail["jobPage"]
    assert jobs["total"] == 2 and [j["item"] for j in jobs["rows"]] == ["bad1", "bad2"]
    only = client.get("/api/batches/mixed/jobs?state=Failed").get_json()
    assert only["total"] == 1 and only["rows"][0]["item"] == "bad2"
    row = only["rows"][0]
    assert row["message"].startswith("digest mismatch") and row["attempts"] == 1
    assert {"item", "title", "url", "name", "state", "attempts", "message", "startedAt",
            "finishedAt", "files", "primaryId", "localIds"} == row.keys()
    assert (row["files"], row["primaryId"], row["localIds"]) == (1, None, [])
    assert client.get("/api/batches/good/jobs?page=2").get_json()["rows"][0]["item"] == "ok2"
    bad = client.get("/api/batches/mixed/jobs?state=Nope")
    assert bad.status_code == 400 and "unknown job state" in bad.get_json()["message"]
    assert client.get("/api/batches?state=Nope").status_code == 400
    missing = client.get("/api/batches/none")
    assert missing.status_code == 404 and missing.get_json()["error"] == "Not Found"
    assert client.get("/api/batches/none/jobs").status_code == 404


@pytest.mark.parametrize("query", ["", "?page=2", "?page=99", "?state=Failed", "?state=Held"])
def test_the_page_and_the_api_list_the_same_batches(client: FlaskClient, query: str) -> None:
    api = [b["name"] for b in client.get(f"/api/batches{query}").get_json()["batches"]]
    page = re.findall(r'data-label="Batch"><a href="/batches/([^"]+)"', html(client, "/" + query))
    assert page == api


@pytest.mark.parametrize("query", ["", "?page=2", "?q=ok", "?q=ok&page=2", "?state=Completed",
                                   "?q=Title+of+ok1", "?state=Failed&q=ok"])
def test_the_page_and_the_api_list_the_same_jobs(client: FlaskClient, query: str) -> None:
    api = [j["item"] for j in client.get(f"/api/batches/good/jobs{query}").get_json()["rows"]]
    page = re.findall(r'data-label="Item"><code title="[^"]*">([^<]+)</code>',
                      html(client, f"/batches/good{query}"))
    assert page == api


@pytest.mark.parametrize(("page", "api"), [("/?state=Nope", "/api/batches?state=Nope"),
                                           ("/batches/good?state=Nope",
                                            "/api/batches/good/jobs?state=Nope")])
def test_the_page_and_the_api_refuse_a_filter_alike(client: FlaskClient, page: str,
                                                    api: str) -> None:
    message = client.get(api).get_json()["message"]
    assert message.startswith("unknown ") and "one of Pending" in message
    assert message.replace("'", "&#39;") in html(client, page, 400)


# --- for machines


def write_beat(state: Path, **fields: float) -> None:
    (state / "heartbeat.json").write_text(json.dumps(fields))


def test_healthz_follows_the_heartbeat(filled: Site) -> None:
    state = filled.state_dir
    client = make_app(state, STARTED_AT=time.time() - 3600).test_client()
    now = time.time()
    write_beat(state, lastSync=now - 5, lastPass=now - 5, passSeconds=0.2, interval=10)
    ok = client.get("/healthz")
    assert ok.status_code == 200 and ok.get_json()["status"] == "ok"
    assert ok.get_json()["limitSeconds"] == 120
    write_beat(state, lastSync=now - 500, lastPass=now - 500, passSeconds=0.2, interval=10)
    stalled = client.get("/healthz")
    assert stalled.status_code == 503 and stalled.get_json()["status"] == "stalled"
    assert stalled.get_json()["lastPassAgeSeconds"] >= 500
    # a slow interval stretches the limit to 3 x interval
    write_beat(state, lastSync=now - 500, lastPass=now - 500, passSeconds=0.2, interval=300)
    assert client.get("/healthz").status_code == 200
    (state / "heartbeat.json").unlink()
    assert client.get("/healthz").status_code == 503  # never passed, up for an hour
    fresh = make_app(state).test_client()  # a new process: its first pass may be running
    assert fresh.get("/healthz").get_json()["status"] == "starting"
    assert fresh.head("/healthz").status_code == 200
    assert fresh.post("/healthz").status_code == 405


def metric_values(text: str) -> dict[tuple[str, str], float]:
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, sample.labels.get("state", ""))] = sample.value
    return values


def test_metrics(client: FlaskClient, filled: Site) -> None:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    values = metric_values(resp.get_data(as_text=True))
    assert values[("batchq_batches", "Completed")] == 1
    assert values[("batchq_batches", "Failed")] == 1
    assert values[("batchq_batches", "Pending")] == 1
    assert values[("batchq_batches", "Processing")] == 0
    assert values[("batchq_jobs", "Completed")] == 4
    assert values[("batchq_jobs", "Failed")] == 1
    assert values[("batchq_jobs", "Processing")] == 0
    assert values[("batchq_emails_sent_total", "")] == 2
    assert values[("batchq_emails_failed_total", "")] == 0
    assert values[("batchq_emails_waiting", "")] == 0
    assert 0 <= values[("batchq_git_sync_age_seconds", "")] < 600
    assert values[("batchq_reconcile_duration_seconds", "")] > 0
    assert values[("batchq_file_errors", "")] == 1
    assert values[("batchq_git_sync_error", "")] == 0
    # scraped from the store each time: a new pass shows at once
    write_beat(filled.state_dir, lastSync=time.time() - 42, lastPass=time.time(),
               passSeconds=1.5, interval=10)
    again = metric_values(client.get("/metrics").get_data(as_text=True))
    assert again[("batchq_reconcile_duration_seconds", "")] == 1.5
    assert 42 <= again[("batchq_git_sync_age_seconds", "")] < 100


def test_metrics_count_failed_deliveries(tmp_path: Path) -> None:
    store = SqliteStore(local_db_path(tmp_path))
    fill_batch(store, "mail", ["a"], BatchState.FAILED)
    from reconciler.domain.model import Report

    store.save_report(Report("mail:1", "mail", "initial", time.time(), "Ingest: FAIL", ("x@y",),
                             "body", (), {"a": "Failed"}, True, b"Subject: s\r\n\r\nb"))
    refused = [RecipientState("x@y", Delivery.DEFERRED, 0, "connection refused", 1)]
    for _ in range(2):
        store.record_delivery("mail:1", refused, error="connection refused",
                              retry_at=time.time() + 60)
    store.close()
    values = metric_values(make_app(tmp_path).test_client().get("/metrics")
                           .get_data(as_text=True))
    assert values[("batchq_emails_failed_total", "")] == 2
    assert values[("batchq_emails_sent_total", "")] == 0
    assert values[("batchq_emails_waiting", "")] == 1
    assert values[("batchq_git_sync_age_seconds", "")] != values[
        ("batchq_git_sync_age_seconds", "")]  # NaN: never synced


def github(body: bytes, secret: bytes = b"s3cret") -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def test_webhook_checks_signatures(client: FlaskClient, app: Flask) -> None:
    body = b'{"ref": "refs/heads/main"}'
    triggered: list[Any] = app.config["TRIGGERED"]
    for headers in ({}, {"X-Hub-Signature-256": "sha256=" + "0" * 64},
                    {"X-Hub-Signature-256": github(body).replace("sha256=", "sha1=")},
                    {"X-Hub-Signature-256": github(body, b"other secret")},
                    {"X-Hub-Signature-256": ""},
                    {"X-Gitlab-Token": "wrong"}, {"X-Gitlab-Token": ""},
                    # a good GitLab token does not excuse a bad GitHub signature
                    {"X-Hub-Signature-256": "sha256=00", "X-Gitlab-Token": "gl-token"}):
        resp = client.post("/hooks/git", data=body, headers=headers)
        assert resp.status_code == 401, headers
        assert "signature" in resp.get_json()["error"]
    assert client.post("/hooks/git", data=body + b" ",
                       headers={"X-Hub-Signature-256": github(body)}).status_code == 401
    assert triggered == []
    good = client.post("/hooks/git", data=body, headers={"X-Hub-Signature-256": github(body),
                                                         "X-GitHub-Event": "push"})
    assert good.status_code == 202 and good.get_json() == {"status": "sync requested"}
    assert triggered == [1]
    assert client.post("/hooks/git", data=body,
                       headers={"X-Gitlab-Token": "gl-token"}).status_code == 202
    assert triggered == [1, 1]
    ping = client.post("/hooks/git", data=b"{}", headers={"X-Hub-Signature-256": github(b"{}"),
                                                          "X-GitHub-Event": "ping"})
    assert ping.status_code == 200 and triggered == [1, 1]
    for method in ("get", "put", "delete", "patch"):
        assert getattr(client, method)("/hooks/git").status_code == 405


def test_webhook_without_configured_secrets_refuses_everything(filled: Site) -> None:
    app = make_app(filled.state_dir, WEBHOOK_SECRET=None, GITLAB_TOKEN="")
    client = app.test_client()
    body = b"{}"
    assert client.post("/hooks/git", data=body,
                       headers={"X-Hub-Signature-256": github(body, b"")}).status_code == 401
    assert client.post("/hooks/git", data=body, headers={"X-Gitlab-Token": ""}
                       ).status_code == 401
    assert app.config["TRIGGERED"] == []


def test_webhook_leaves_a_sync_request_for_a_separate_loop(filled: Site) -> None:
    state = filled.state_dir
    client = make_app(state, TRIGGER_SYNC=None).test_client()
    request = state / "sync-requested"
    assert not request.exists()
    assert client.post("/hooks/git", headers={"X-Gitlab-Token": "wrong"}).status_code == 401
    assert not request.exists()
    assert client.post("/hooks/git", headers={"X-Gitlab-Token": "gl-token"}).status_code == 202
    assert request.exists()


# --- the site changes nothing


def dump(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_the_site_changes_nothing(client: FlaskClient, filled: Site) -> None:
    db = local_db_path(filled.state_dir)
    before = dump(db)
    files = sorted(p.name for p in filled.state_dir.iterdir())
    for path in ("/", "/?state=Failed", "/?page=2", "/batches/mixed", "/batches/good?q=ok",
                 "/batches/mixed/reports/1.eml", "/api/batches", "/api/batches/mixed",
                 "/api/batches/mixed/jobs", "/metrics", "/healthz", "/batches/nope",
                 "/static/style.css"):
        client.get(path).close()
    for path in ("/", "/batches/mixed", "/api/batches", "/api/batches/mixed", "/metrics"):
        for method in ("post", "put", "delete", "patch"):
            assert getattr(client, method)(path).status_code == 405, (method, path)
    assert dump(db) == before
    assert sorted(p.name for p in filled.state_dir.iterdir()) == files


def test_pages_forbid_scripts_and_sniffing(client: FlaskClient) -> None:
    for path in ("/", "/batches/good", "/api/batches", "/batches/nope"):
        resp = client.get(path)
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert "script-src" not in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"


# --- end to end: the real reconciler's story


TIMES = {"at", "createdAt", "updatedAt", "submittedAt", "startedAt", "finishedAt",
         "deletedAt", "lastTransition", "lastSync"}


def comparable(value: Any, commits: dict[str, str]) -> Any:
    """The site's JSON without what differs between two tellings of one story: times,
    commit ids (numbered in order of appearance), payload hosts, the report's date, each
    batch's random incarnation id, and where a delivered message went (a server's "250"
    or the outbox file)."""
    if isinstance(value, dict):
        return {k: ("<time>" if k in TIMES and v else comparable(v, commits))
                for k, v in value.items() if k != "syncAgeSeconds"}
    if isinstance(value, list):
        return [comparable(v, commits) for v in value]
    if isinstance(value, str):
        value = re.sub(r"https?://[^/\s]+/", "<payloads>/", value)
        value = re.sub(r"Reported: .*", "Reported: <date>", value)
        value = re.sub(r"(Submitted|Completed): +\d{4}-\d\d-\d\dT[\d:]+Z", r"\1: <time>",
                       value)
        value = re.sub(r":[0-9a-f]{12}:", ":<uid>:", value)
        value = re.sub(r"^250 .*", "250 <accepted>", value)
        return re.sub(r"\b[0-9a-f]{40}\b",
                      lambda m: commits.setdefault(m.group(), f"<commit {len(commits) + 1}>"),
                      value)
    return value


def story(state: Path) -> Any:
    client = make_app(state, PAGE_SIZE=50, JOB_PAGE_SIZE=50).test_client()
    listing = client.get("/api/batches").get_json()
    details = {b["name"]: client.get(f"/api/batches/{b['name']}").get_json()
               for b in listing["batches"]}
    return comparable({"list": listing, "details": details}, {})


def test_the_seeded_story_is_the_real_reconcilers(reconciled: Harness, tmp_path: Path) -> None:
    """What `filled` seeds in milliseconds is what Git, worker processes and SMTP leave."""
    seeded = seed_story(tmp_path / "seeded")
    seeded.store.close()
    real = story(reconciled.settings.state_dir)
    assert real["list"]["counts"] == {"Completed": 1, "Failed": 1, "Pending": 1}
    assert story(seeded.state_dir) == real


def test_admin_edit_is_visible(reconciled: Harness) -> None:
    client = make_app(reconciled.settings.state_dir).test_client()
    reconciled.repo.edit_batch("batches/good.yaml", who=ADMIN, state="Held")
    reconciled.until_idle()
    detail = client.get("/api/batches/good").get_json()
    assert detail["requestedState"] == "Held" and detail["generation"] == 2
    assert "requested Held" in html(client, "/batches/good")


# --- hostile text, large batches and the refresh, from a store filled directly


def fill_batch(store: SqliteStore, name: str, ids: list[str], state: BatchState, *,
               titles: dict[str, str] | None = None, depositor: str = "Dee Positor",
               done: int | None = None, error: str = "") -> None:
    spec = {"profile": "p", "depositor": {"name": depositor, "email": "d@example.org"},
            "manifest": {"items": [{"id": i, "url": f"http://h/{i}"} for i in ids]}}
    b = store.apply_spec(name, spec, source_path=f"batches/{name}.yaml", revision="a" * 40,
                         committed_at=time.time(), error=error)
    store.set_items(name, [Item(id=i, url=f"http://h/{i}", title=(titles or {}).get(i))
                           for i in ids])
    rows = store.list_items(name)
    done = len(rows) if done is None else done
    for s in rows[:done]:
        s.state, s.attempts = JobState.COMPLETED, 1
    store.update_items(name, rows)
    counts = {"Completed": done, "Pending": len(rows) - done}
    store.update_status(name, b.status, BatchStatus(
        state=state, item_count=len(rows), counts={k: v for k, v in counts.items() if v},
        message=f"{name} is {state}"))
    store.add_event(Event(name, time.time(), str(state), "because", "a" * 40))


HOSTILE = '<script>alert("x")</script> "quoted" \'single\' ' + "W" * 300


def test_hostile_text_is_escaped(tmp_path: Path) -> None:
    store = SqliteStore(local_db_path(tmp_path))
    fill_batch(store, "hostile", ["it-1"], BatchState.COMPLETED, titles={"it-1": HOSTILE},
               depositor=HOSTILE[:250], error=HOSTILE)
    store.save_sync_state(SyncState(file_errors={"batches/x.yaml": HOSTILE},
                                    sync_error=HOSTILE, deletion_refused=HOSTILE))
    store.close()
    client = make_app(tmp_path).test_client()
    for path in ("/", "/batches/hostile", "/batches/hostile?q=%3Cscript%3E",
                 "/batches/%3Cscript%3E", "/?state=%3Cscript%3E"):
        page = client.get(path).get_data(as_text=True)
        assert "<script" not in page, path
        assert 'alert("x")' not in page, path
    page = html(client, "/batches/hostile")
    escaped = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &#34;quoted&#34; &#39;single&#39;"
    assert escaped in page
    assert page.count("&lt;script&gt;") >= 5  # title, depositor, spec error, banners
    detail = client.get("/api/batches/hostile").get_json()
    assert detail["depositor"]["name"] == HOSTILE[:250]  # JSON carries the text as is


def test_a_large_batch_pages_on_the_server(tmp_path: Path) -> None:
    store = SqliteStore(local_db_path(tmp_path))
    ids = [f"item-{i:05d}" for i in range(2500)]
    fill_batch(store, "large", ids, BatchState.PROCESSING, done=1000)
    store.close()
    client = make_app(tmp_path, JOB_PAGE_SIZE=100).test_client()
    page = html(client, "/batches/large")
    assert page.count("<tr>") == 101  # the header and one page of rows
    assert "Page 1 of 25" in page and "2,500 in all" in page
    assert 'aria-label="40% finished: 1000 completed, 0 failed, 0 processing, of 2500 jobs"' in page
    assert '<meta http-equiv="refresh" content="10">' in page  # Processing: refreshes
    last = html(client, "/batches/large?page=25")
    assert ">item-02499</code>" in last and ">item-02399</code>" not in last
    pending = client.get("/api/batches/large/jobs?state=Pending&page=15").get_json()
    assert pending["total"] == 1500 and pending["pages"] == 15
    assert pending["rows"][-1]["item"] == "item-02499"
    assert '<meta http-equiv="refresh"' in html(client, "/")


# --- configuration and serving


def test_config_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "web.json"
    conf.write_text(json.dumps({"PAGE_SIZE": 7, "STALL_SECONDS": 30,
                                "STATE_DIR": str(tmp_path / "from-file")}))
    monkeypatch.setenv("BATCHQ_WEB_CONFIG", str(conf))
    app = create_app({"STALL_SECONDS": 5})
    assert app.config["PAGE_SIZE"] == 7  # from the file
    assert app.config["STALL_SECONDS"] == 5  # the argument wins
    assert app.config["STATE_DIR"] == tmp_path / "from-file"  # made a Path
    assert app.config["JOB_PAGE_SIZE"] == 100  # default
    py = tmp_path / "web.cfg"
    py.write_text("PAGE_SIZE = 9\nREPO_WEB_URL = 'https://example.org/r'\n")
    monkeypatch.setenv("BATCHQ_WEB_CONFIG", str(py))
    app = create_app({"STATE_DIR": tmp_path})
    assert app.config["PAGE_SIZE"] == 9 and app.config["REPO_WEB_URL"] == "https://example.org/r"
    # no STORE_FACTORY: the local store under STATE_DIR
    assert app.test_client().get("/api/batches").get_json()["total"] == 0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_serve_opens_a_local_store_per_request(filled: Site,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    state = filled.state_dir
    monkeypatch.setenv("BATCHQ_GITLAB_TOKEN", "from-env")
    woken = threading.Event()
    factory, shared = store_factory(BackendSettings(state_dir=state))
    assert not shared  # a SQLite connection serves one thread: one per request
    for store in (factory,):
        server = build_server(store, "127.0.0.1:0", state, trigger=woken.set)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            base = f"http://127.0.0.1:{server.server_port}"
            results: list[int] = []

            def fetch(path: str, base: str = base, results: list[int] = results) -> None:
                results.append(get(base + path)[0])

            threads = [threading.Thread(target=fetch, args=(p,)) for p in
                       ("/", "/batches/mixed", "/api/batches", "/metrics") * 3]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert results == [200] * 12
            req = urllib.request.Request(base + "/hooks/git", data=b"{}", method="POST",
                                         headers={"X-Gitlab-Token": "from-env"})
            with urllib.request.urlopen(req, timeout=10) as r:
                assert r.status == 202
            assert woken.is_set()
            woken.clear()
        finally:
            server.shutdown()
            server.server_close()


# --- both backends read the same way


def test_the_site_reads_either_backend(world_and_harness: tuple[Any, Harness]) -> None:
    world, h = world_and_harness
    items = [world.item(f"s{i}", fail=i == 2, gated=False) for i in (1, 2)]
    h.repo.write("profiles/test.yaml", profile_doc(world.prefix))
    h.repo.write("batches/both.yaml", batch_doc(items))
    h.repo.commit("submit both")
    h.sync()
    h.until(lambda: h.state("both") == "Failed", "the batch to fail", timeout=120)
    h.rec.deliver()
    shared = h.settings.backend != "local"
    factory = (lambda: h.store) if shared else store_factory(
        BackendSettings(state_dir=h.settings.state_dir))[0]
    client = create_app({"STORE_FACTORY": factory, "SHARED_STORE": shared,
                         "STATE_DIR": h.settings.state_dir}).test_client()
    listing = client.get("/api/batches").get_json()
    assert [(b["name"], b["state"], b["counts"]) for b in listing["batches"]] == [
        ("both", "Failed", {"Completed": 1, "Failed": 1})]
    detail = client.get("/api/batches/both?state=Failed").get_json()
    assert [j["item"] for j in detail["jobPage"]["rows"]] == ["s2"]
    assert [r["subject"] for r in detail["reports"]] == [
        "Ingest: FAIL -- Submission Failed: both"]
    assert detail["reports"][0]["delivered"] is True
    page = html(client, "/batches/both")
    assert ">s1</code>" in page and "Ingest: FAIL -- Submission Failed: both" in page
    values = metric_values(client.get("/metrics").get_data(as_text=True))
    assert values[("batchq_batches", "Failed")] == 1
    assert values[("batchq_jobs", "Failed")] == 1
    assert values[("batchq_emails_sent_total", "")] == 1
