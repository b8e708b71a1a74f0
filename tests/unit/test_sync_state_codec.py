"""The sync state is stored field by field under the names, and in the text, that the
string key-value meta used before it was typed: a state dir or a cluster written by an
earlier version reads the same, and saving what was read writes nothing."""

from __future__ import annotations

import json

import pytest

from reconciler.store.base import SyncState
from reconciler.store.codec import sync_state_from_meta, sync_state_to_meta, sync_state_writes

# as `set_meta` stored them: plain text, or json.dumps(value, sort_keys=True)
LEGACY = {
    "synced_commit": "0123abcd", "sync_error": "", "storage_error": "",
    "message_id_domain": "5f3a.batchq.invalid",
    "profiles": json.dumps({"demo": {"storage": "/s", "command": ["true"]}}, sort_keys=True),
    "queue": json.dumps({"paused": False, "maxActiveJobs": 4}, sort_keys=True),
    "profile_paths": json.dumps({"profiles/demo.yaml": "demo"}, sort_keys=True),
    "renamed_batches": json.dumps({"a": {"path": "batches/a.yaml", "to": "b"}},
                                  sort_keys=True),
    "file_errors": json.dumps({"batches/x.yaml": "batches/x.yaml:3:1: bad"}, sort_keys=True),
    "deletion_refused": "",
    "deletions": json.dumps({"gone": "0123abcd"}, sort_keys=True),
    "placeholders": "{}",  # the Kubernetes store's own key: not part of the sync state
}


def test_legacy_meta_reads_field_by_field_and_saving_it_back_writes_nothing() -> None:
    state = sync_state_from_meta(LEGACY)
    assert state.synced_commit == "0123abcd"
    assert state.profiles == {"demo": {"storage": "/s", "command": ["true"]}}
    assert state.queue["maxActiveJobs"] == 4
    assert state.renamed_batches["a"] == {"path": "batches/a.yaml", "to": "b"}
    assert state.deletions == {"gone": "0123abcd"}
    assert sync_state_writes(LEGACY, state) == []
    assert sync_state_to_meta(state) == {
        **{k: v for k, v in LEGACY.items() if k != "placeholders"},
        "access_refusals": "{}", "access_held": "{}"}  # fields added since: their defaults


def test_nothing_stored_reads_as_the_defaults_and_they_are_not_written() -> None:
    assert sync_state_from_meta({}) == SyncState()
    assert sync_state_writes({}, SyncState()) == []


def test_only_changed_fields_are_written_in_field_order() -> None:
    state = sync_state_from_meta(LEGACY)
    state.deletions = {}
    state.renamed_batches = {}
    state.sync_error = "git fetch failed"
    assert sync_state_writes(LEGACY, state) == [
        ("sync_error", "git fetch failed"), ("renamed_batches", "{}"), ("deletions", "{}")]


@pytest.mark.parametrize(("key", "text"), [("file_errors", "{not json"),
                                           ("profiles", "[1, 2]")])
def test_a_damaged_field_is_named(key: str, text: str) -> None:
    with pytest.raises(ValueError, match=f"stored sync state '{key}'"):
        sync_state_from_meta({**LEGACY, key: text})
