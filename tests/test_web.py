"""The site through Flask's test client, over a store filled by a real reconciler."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

from reconciler.store.local import SqliteStore
from tests.fixtures import ADMIN, GitRepo, PayloadServer, SmtpServer, batch_doc, profile_doc
from tests.harness import Harness
from web.app import create_app


@pytest.fixture
def filled(git_repo: GitRepo, smtp: SmtpServer, payloads: PayloadServer,
           tmp_path: Path) -> Iterator[Harness]:
    """Two finished batches (one failed, one completed) and a broken file."""
    h = Harness(git_repo, tmp_path / "state", smtp.hostport)
    git_repo.write("profiles/test.yaml", profile_doc(payloads.base))
    ok = [payloads.add(f"ok{i}", f"ok {i}\n".encode()) for i in range(3)]
    bad = [payloads.add("bad1", b"b\n"), payloads.add("bad2", b"c\n")]
    payloads.files["bad2"] = b"x\n"
    git_repo.write("batches/good.yaml", batch_doc(ok))
    git_repo.write("batches/mixed.yaml", batch_doc(bad))
    git_repo.commit("two batches")
    h.until_idle()
    git_repo.write("batches/broken.yaml", "kind: Batch\nspec: [\n")
    git_repo.edit_batch("batches/mixed.yaml", state="UpdateReporting")
    h.until_idle()
    yield h
    h.close()


@pytest.fixture
def app(filled: Harness) -> Flask:
    state = filled.settings.state_dir
    triggered: list[int] = []
    app = create_app({
        "STORE_FACTORY": lambda: SqliteStore(state / "batchq.sqlite3"),
        "STATE_DIR": state, "WEBHOOK_SECRET": "s3cret", "GITLAB_TOKEN": "gl-token",
        "TRIGGER_SYNC": lambda: triggered.append(1), "PAGE_SIZE": 2, "JOB_PAGE_SIZE": 2,
        "REPO_WEB_URL": "https://git.example.org/ingest/batches",
    })
    app.config["TRIGGERED"] = triggered
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_list_filters_and_pages(client: FlaskClient, filled: Harness) -> None:
    html = client.get("/").get_data(as_text=True)
    assert "All (3)" in html and "Completed (1)" in html and "Failed (1)" in html
    assert "Page 1 of 2" in html and 'rel="next"' in html
    assert "cannot be used" in html and "batches/broken.yaml:" in html
    failed = client.get("/?state=Failed").get_data(as_text=True)
    assert ">mixed</a>" in failed and ">good</a>" not in failed
    assert client.get("/?state=Nonsense").status_code == 200
    assert client.get("/?page=99").status_code == 200  # clamped to the last page


def test_detail_jobs_timeline_and_reports(client: FlaskClient, filled: Harness) -> None:
    html = client.get("/batches/mixed").get_data(as_text=True)
    assert "bad1" in html and "Page 1 of 1" not in html
    assert "digest mismatch" in html
    assert "Ingest: FAIL -- Submission Failed: mixed" in html
    assert "nothing (so no email was sent)" in html
    rev = filled.batch("mixed").source_revision
    assert f"https://git.example.org/ingest/batches/commit/{rev}" in html
    assert f"https://git.example.org/ingest/batches/blob/{rev}/batches/mixed.yaml" in html
    only_failed = client.get("/batches/mixed?state=Failed").get_data(as_text=True)
    assert "<code>bad2</code>" in only_failed and "<code>bad1</code>" not in only_failed
    search = client.get("/batches/good?q=ok2").get_data(as_text=True)
    assert "<code>ok2</code>" in search and "<code>ok1</code>" not in search
    page2 = client.get("/batches/good?page=2").get_data(as_text=True)
    assert "<code>ok2</code>" in page2 and "Page 2 of 2" in page2
    assert client.get("/batches/nope").status_code == 404


def test_api_mirrors_the_pages(client: FlaskClient) -> None:
    listing = client.get("/api/batches?state=Completed").get_json()
    assert listing["total"] == 1 and listing["batches"][0]["name"] == "good"
    assert listing["batches"][0]["progress"] == 100
    detail = client.get("/api/batches/mixed").get_json()
    assert detail["state"] == "Failed" and detail["counts"] == {"Completed": 1, "Failed": 1}
    assert [r["kind"] for r in detail["reports"]] == ["initial", "update"]
    assert detail["reports"][0]["delivered"] is True
    assert detail["reports"][1]["emailed"] is False
    assert [e["reason"] for e in detail["timeline"]][:3] == ["SpecApplied", "Processing",
                                                               "Reporting"]
    jobs = client.get("/api/batches/mixed/jobs?state=Failed").get_json()
    assert jobs["total"] == 1 and jobs["jobs"][0]["item"] == "bad2"
    assert jobs["jobs"][0]["message"].startswith("digest mismatch")
    assert client.get("/api/batches/mixed/jobs?state=Nope").status_code == 400
    assert client.get("/api/batches/none").status_code == 404


def test_healthz_follows_the_heartbeat(client: FlaskClient, filled: Harness) -> None:
    assert client.get("/healthz").status_code == 200
    beat = filled.settings.state_dir / "heartbeat.json"
    data = json.loads(beat.read_text())
    data["lastPass"] = time.time() - 3600
    beat.write_text(json.dumps(data))
    stalled = client.get("/healthz")
    assert stalled.status_code == 503 and stalled.get_json()["status"] == "stalled"
    beat.unlink()
    assert client.get("/healthz").status_code == 503


def test_metrics(client: FlaskClient) -> None:
    text = client.get("/metrics").get_data(as_text=True)
    values: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, sample.labels.get("state", ""))] = sample.value
    assert values[("batchq_batches", "Completed")] == 1
    assert values[("batchq_batches", "Failed")] == 1
    assert values[("batchq_jobs", "Completed")] == 4
    assert values[("batchq_jobs", "Failed")] == 1
    assert values[("batchq_emails_sent_total", "")] == 2
    assert values[("batchq_emails_failed_total", "")] == 0
    assert 0 <= values[("batchq_git_sync_age_seconds", "")] < 600
    assert values[("batchq_reconcile_duration_seconds", "")] > 0


def test_webhook_checks_signatures(client: FlaskClient, app: Flask) -> None:
    body = b'{"ref": "refs/heads/main"}'
    good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    triggered: list[Any] = app.config["TRIGGERED"]
    for headers in ({}, {"X-Hub-Signature-256": "sha256=" + "0" * 64},
                    {"X-Hub-Signature-256": good.replace("sha256=", "sha1=")},
                    {"X-Gitlab-Token": "wrong"}):
        assert client.post("/hooks/git", data=body, headers=headers).status_code == 401
    assert triggered == []
    assert client.post("/hooks/git", data=body,
                       headers={"X-Hub-Signature-256": good}).status_code == 202
    assert client.post("/hooks/git", data=body + b" ",
                       headers={"X-Hub-Signature-256": good}).status_code == 401
    assert client.post("/hooks/git", data=body,
                       headers={"X-Gitlab-Token": "gl-token"}).status_code == 202
    assert triggered == [1, 1]
    assert client.get("/hooks/git").status_code == 405


def test_the_site_changes_nothing(client: FlaskClient, filled: Harness) -> None:
    store = SqliteStore(filled.settings.state_dir / "batchq.sqlite3")
    before = store.db.execute("SELECT COUNT(*), SUM(LENGTH(status_json)) FROM batches"
                              ).fetchone()
    for path in ("/", "/?state=Failed", "/batches/mixed", "/api/batches", "/metrics",
                 "/api/batches/mixed/jobs", "/healthz"):
        client.get(path)
    for path in ("/", "/batches/mixed", "/api/batches"):
        assert client.post(path).status_code == 405
        assert client.delete(path).status_code == 405
    after = store.db.execute("SELECT COUNT(*), SUM(LENGTH(status_json)) FROM batches"
                             ).fetchone()
    store.close()
    assert before == after


def test_admin_edit_is_visible(client: FlaskClient, filled: Harness) -> None:
    filled.repo.edit_batch("batches/good.yaml", who=ADMIN, state="Held")
    filled.until_idle()
    detail = client.get("/api/batches/good").get_json()
    assert detail["requestedState"] == "Held" and detail["generation"] == 2
