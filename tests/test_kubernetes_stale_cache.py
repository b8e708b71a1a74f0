"""The watch cache never shows a step less than the store itself wrote (issue 13
follow-up: a pass that reads a stale cache must not decide on it and forget the batch).

Run against the real API server; the stale read is made to happen by ordering, not by
timing: the store's write is made while a list is on its way, so the list's answer is
older than what the store wrote and `remember`ed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from reconciler.store.kubernetes.informer import Informer, Obj

pytestmark = pytest.mark.kubernetes


def _configmap(api: client.CoreV1Api, ns: str, name: str, value: str) -> Obj:
    body = {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "labels": {"batchq.dev/kind": "test"}},
            "data": {"value": value}}
    resp = api.create_namespaced_config_map(ns, body, _preload_content=False)
    return dict(json.loads(resp.data))


def test_a_list_on_its_way_while_we_wrote_does_not_bring_back_the_older_version(
        k8s_cluster: Any, k8s_namespace: str) -> None:
    api_client = k8s_cluster.api_client()
    core = client.CoreV1Api(api_client)
    _configmap(core, k8s_namespace, "status", "Held")
    seen_at_list: list[str] = []
    wrote: list[Obj] = []

    def list_then_write(**kwargs: Any) -> Any:
        """The real list; then, before its answer is taken in, the store's own write of
        the same object, `remember`ed as the store does after every write."""
        answer = core.list_namespaced_config_map(**kwargs)
        if not wrote:
            cm = core.read_namespaced_config_map("status", k8s_namespace,
                                                 _preload_content=False)
            body = json.loads(cm.data)
            body["data"]["value"] = "Pending"
            new = json.loads(core.replace_namespaced_config_map(
                "status", k8s_namespace, body, _preload_content=False).data)
            informer.remember(new)
            wrote.append(new)
        return answer

    def on_object(obj: Obj | None) -> None:
        if obj is None:  # the list was just taken in, before any watch event
            seen_at_list.append((informer.get("status") or {}).get("data", {}).get("value"))

    informer = Informer("configmaps", list_then_write, lambda: None, on_object=on_object,
                        namespace=k8s_namespace, label_selector="batchq.dev/kind")
    informer.start()
    try:
        assert informer.wait_synced(30), informer.error
        assert wrote, "the write was not made"
        # the list's answer was made before the write: its "Held" must not replace "Pending"
        assert seen_at_list == ["Pending"]
    finally:
        informer.stop()
        api_client.close()
