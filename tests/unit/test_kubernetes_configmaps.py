"""The ConfigMaps beside a Batch as pure functions (`reconciler/store/kubernetes/
configmaps.py`): their names, and the JSON inside them read back to what was written."""

from __future__ import annotations

import itertools
import json
import os

import pytest

from reconciler.domain.model import Item, Report
from reconciler.domain.states import JobState
from reconciler.store.base import Delivery, RecipientState
from reconciler.store.kubernetes.configmaps import (
    CHUNK,
    ITEMS_BYTES,
    REPORT_PART,
    TIMELINE_BYTES,
    TIMELINE_MAX,
    bounded_timeline,
    chunk_name,
    delivery_accepted,
    item_chunks,
    item_status,
    new_item_records,
    recipients_from_cm,
    report_cm_name,
    report_from_json,
    report_from_parts,
    report_incarnation,
    report_json,
    report_part_name,
    report_parts,
    timeline_name,
)


@pytest.mark.parametrize(("report_id", "name", "incarnation"), [
    ("maps:0a1b2c3d4e5f:2", "maps-report-2-0a1b2c3d4e5f", "0a1b2c3d4e5f"),
    ("maps:1", "maps-report-1", ""),  # a batch stored before incarnations keeps its names
])
def test_report_names_follow_the_report_id(report_id: str, name: str,
                                           incarnation: str) -> None:
    assert report_cm_name(report_id) == name
    assert report_incarnation(report_id) == incarnation


def test_names_of_items_chunks_and_timeline() -> None:
    assert CHUNK == 500
    assert chunk_name("b", 0) == "b-items-0000" and chunk_name("b", 12) == "b-items-0012"
    assert timeline_name("b") == "b-timeline"


def test_a_report_reads_back_as_written_with_its_message_apart() -> None:
    report = Report(id="b:u:1", batch="b", kind="initial", created_at=1000.5,
                    subject="Ingest: OK -- Submission Processed: b",
                    recipients=("d@example.org",), body="body", changed=("x",),
                    job_states={"x": "Completed"}, emailed=True, message=b"raw message")
    text = report_json(report)
    assert "raw message" not in text  # kept as binaryData message.eml
    assert report_from_json(text, report.message) == report


def test_a_large_report_is_cut_into_bounded_parts_that_read_back_whole() -> None:
    rows = "".join(f"item-{n:05d}  Completed  {os.urandom(24).hex()}\n" for n in range(10_000))
    report = Report(id="b:u:1", batch="b", kind="initial", created_at=1000.5,
                    subject="s", recipients=("d@example.org",), body=rows, changed=(),
                    job_states={f"item-{n:05d}": "Completed" for n in range(10_000)},
                    emailed=True, message=rows.encode() * 2)
    parts = report_parts(report)
    assert len(parts) > 1 and all(len(p) <= REPORT_PART for p in parts)
    assert report_from_parts(parts) == report
    assert report_parts(report) == parts  # the same report cuts the same parts
    assert report_part_name("b-report-1-u", 2) == "b-report-1-u-part-002"


def test_the_timeline_keeps_the_newest_events_that_fit() -> None:
    events = [[float(n), "Restarted", f"item-{n}: " + "m" * 2000, "rev"] for n in range(600)]
    kept = bounded_timeline(events)
    assert kept[-1] == events[-1] and kept == events[-len(kept):]
    assert len(json.dumps(kept, separators=(",", ":"))) <= TIMELINE_BYTES < len(
        json.dumps(events[-TIMELINE_MAX:], separators=(",", ":")))
    assert bounded_timeline(events[:3]) == events[:3]


def test_items_are_cut_by_count_and_by_size_and_alike_every_time() -> None:
    small = [Item(id=f"s{n}", url=f"http://127.0.0.1/{n}") for n in range(1200)]
    assert all(len(c) <= CHUNK for _, c in item_chunks(small))
    assert len(item_chunks(small[:3])) == 1
    long_url = "http://127.0.0.1/" + "u" * 8000  # the schema allows 8 KiB URLs
    big = [Item(id=f"b{n}", url=f"{long_url}{n}", title="t" * 1000) for n in range(1200)]
    chunks = item_chunks(big)
    assert chunks == item_chunks(big)
    assert [first for first, _ in chunks] == list(
        itertools.accumulate([0] + [len(c) for _, c in chunks[:-1]]))
    assert sum(len(c) for _, c in chunks) == 1200
    assert len(chunks) > len(item_chunks(small))  # long items: fewer a chunk
    for first, chunk in chunks:  # full grown records (1 KiB messages) still fit
        records = new_item_records(chunk, first)
        for r in records:
            r.update(message="m" * 1024, jobName="j" * 63, startedAt=1e9, finishedAt=1e9)
        assert len(json.dumps(records)) <= ITEMS_BYTES


def test_new_items_are_numbered_from_their_chunk_and_read_back_pending() -> None:
    items = [Item(id="x", url="http://127.0.0.1/x"), Item(id="y", url="http://127.0.0.1/y")]
    records = new_item_records(items, 500)
    assert [r["seq"] for r in records] == [500, 501]
    statuses = [item_status(json.loads(json.dumps(r))) for r in records]  # as stored
    assert [(s.item, s.seq, s.state, s.attempts, s.job_name) for s in statuses] == [
        (items[0], 500, JobState.PENDING, 0, None), (items[1], 501, JobState.PENDING, 0, None)]


def test_delivery_is_read_from_the_report_configmaps_labels_and_annotations() -> None:
    a = "batchq.dev/"
    assert not delivery_accepted({"labels": {f"{a}outbox": "pending"}})
    assert delivery_accepted({"labels": {f"{a}outbox": "delivered"}})
    assert delivery_accepted({"labels": {f"{a}outbox": "pending"},
                              "annotations": {f"{a}delivered-at": "1000"}})
    sent = RecipientState("d@example.org", Delivery.DELIVERED, 250, "ok", 1, 1000.0)
    cm = {"metadata": {"annotations": {f"{a}recipients": json.dumps([sent.to_dict()])}}}
    assert recipients_from_cm(cm) == (sent,)
    assert recipients_from_cm({"metadata": {}}) == ()
