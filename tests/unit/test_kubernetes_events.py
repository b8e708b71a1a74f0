"""Which Events a delivery attempt makes, and how an Event is named and shaped (pure)."""

from __future__ import annotations

from reconciler.store.base import Delivery, RecipientState
from reconciler.store.kubernetes.events import (
    KINDS,
    delivery_events,
    event_body,
    event_name,
)

R = RecipientState
BATCH = {"metadata": {"name": "maps", "namespace": "ns", "uid": "u-1"}}


def test_the_first_acceptance_is_report_sent_once() -> None:
    rs = [R("jane@example.org", Delivery.DELIVERED, 250),
          R("ops@example.org", Delivery.DEFERRED, 451, "try later")]
    assert delivery_events("r1", rs, "451 try later", 100.0, first_acceptance=True) == [
        ("ReportSent", "report r1 accepted for jane@example.org"),
        ("ReportDeferred", "report r1: 451 try later; tried again later")]
    assert delivery_events("r1", rs, "", 100.0, first_acceptance=False) == []


def test_an_address_never_reached_is_report_failed_when_the_entry_closes() -> None:
    rs = [R("jane@example.org", Delivery.DELIVERED, 250),
          R("gone@example.org", Delivery.BOUNCED, 550, "no such user")]
    assert delivery_events("r1", rs, "", None, first_acceptance=False) == [
        ("ReportFailed", "report r1 to gone@example.org: undeliverable: refused by the"
                         " server, not retried (550 no such user)")]
    # while another recipient still waits, the bounce is told once, at the close
    assert [r for r, _ in delivery_events("r1", rs, "x", 5.0, first_acceptance=False)] == [
        "ReportDeferred"]


def test_the_same_event_of_the_same_object_has_the_same_name() -> None:
    kind = KINDS["JobFailed"]
    assert event_name("maps", "u-1", kind, "a") == event_name("maps", "u-1", kind, "a")
    assert event_name("maps", "u-1", kind, "a") != event_name("maps", "u-1", kind, "b")
    assert event_name("maps", "u-1", kind, "a") != event_name("maps", "u-2", kind, "a")


def test_an_event_regards_the_batch_and_names_its_controller() -> None:
    body = event_body("maps.x", BATCH, KINDS["Processing"], "n" * 2000, "host-1", 0.0)
    assert body["regarding"] == {"apiVersion": "batchq.dev/v1", "kind": "Batch",
                                 "name": "maps", "namespace": "ns", "uid": "u-1"}
    assert (body["reason"], body["action"], body["type"]) == ("Admitted", "Admit", "Normal")
    assert body["reportingController"] == "batchq.dev/reconciler"
    assert len(body["note"]) == 1024 and body["eventTime"] == "1970-01-01T00:00:00.000000Z"
