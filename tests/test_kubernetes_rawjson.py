"""rawjson.create against a real HTTP server on loopback (no cluster needed): the body goes
out as the JSON of the dict, exactly (no field dropped or added by the client's models),
with the client's bearer token; the 201 comes back decoded; and every refusal is the
`ApiException` the generated client raises (status, reason, the server's body), so the
store still reads a 409 as "exists already" and a 429/5xx as worth retrying. And the
client's settings decide the proxy once, as its connection pool does.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from reconciler.store.kubernetes import rawjson
from reconciler.store.kubernetes.apierrors import transient
from reconciler.store.kubernetes.store import client_configuration

TOKEN = "t0ken"


class FakeApiServer(ThreadingHTTPServer):
    """Answers every POST with `status` and notes what it received."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.status = 201
        self.received: list[tuple[str, dict[str, str], bytes]] = []


class Handler(BaseHTTPRequestHandler):
    server: FakeApiServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(
            (self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status = self.server.status
        if status == 201:
            obj = json.loads(body)
            obj["metadata"].update(uid="u-1", resourceVersion="42")
            answer = json.dumps(obj).encode()
        else:
            answer = json.dumps({"kind": "Status", "code": status,
                                 "message": f"refused with {status}"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    srv = FakeApiServer()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def api(server: FakeApiServer) -> Iterator[client.ApiClient]:
    cfg = client.Configuration()
    cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
    cfg.api_key = {"authorization": f"Bearer {TOKEN}"}
    cfg.retries = False
    api = client.ApiClient(cfg)
    try:
        yield api
    finally:
        api.close()


BODY: dict[str, Any] = {
    "apiVersion": "batch/v1", "kind": "Job",
    "metadata": {"name": "b-i-1", "labels": {"batchq.dev/batch": "b"},
                 "finalizers": ["batchq.dev/result"]},
    # a field the pinned client's models do not know still reaches the API server, which
    # is the one to judge it (the models refused it before the create was even sent)
    "spec": {"suspend": False, "someFutureField": {"x": 1},
             "template": {"spec": {"restartPolicy": "Never", "containers": [
                 {"name": "worker", "image": "batchq:latest",
                  "env": [{"name": "BATCHQ_ITEM_URL", "value": "http://p.invalid/ü"}]}]}}},
}


def test_the_body_goes_out_as_sent_and_the_answer_comes_back_decoded(
        server: FakeApiServer, api: client.ApiClient) -> None:
    created = rawjson.create(api, rawjson.jobs_path("ns"), BODY)
    assert created["metadata"]["uid"] == "u-1"
    assert created["metadata"]["resourceVersion"] == "42"
    assert created["spec"] == BODY["spec"]
    [(path, headers, body)] = server.received
    assert path == "/apis/batch/v1/namespaces/ns/jobs"
    assert json.loads(body) == BODY
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["content-type"] == "application/json"
    rawjson.create(api, rawjson.configmaps_path("ns"), {"metadata": {"name": "cm"}})
    assert server.received[-1][0] == "/api/v1/namespaces/ns/configmaps"


@pytest.mark.parametrize("status", [409, 422, 429, 500, 503])
def test_a_refusal_is_the_clients_own_exception(
        server: FakeApiServer, api: client.ApiClient, status: int) -> None:
    server.status = status
    with pytest.raises(ApiException) as caught:
        rawjson.create(api, rawjson.jobs_path("ns"), BODY)
    assert caught.value.status == status
    assert f"refused with {status}" in str(caught.value.body)
    assert transient(caught.value) == (status in (429, 500, 503))


def test_the_proxy_is_read_once_at_setup_not_on_every_request(
        server: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A token from a kubeconfig (or the pod's service account) is refreshed before every
    request by setting the host again, and the client then read the whole environment to
    find the proxy anew. The connection pool is built once, from the proxy at setup: that
    is the one that counts, and the one kept."""
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {
            "server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "u", "user": {"token": TOKEN}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    cfg = client_configuration(str(kubeconfig))
    assert cfg.proxy is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")  # named after setup
    api = client.ApiClient(cfg)
    try:
        created = rawjson.create(api, rawjson.jobs_path("ns"), BODY)  # refreshes the token
    finally:
        api.close()
    assert created["metadata"]["uid"] == "u-1"  # straight to the server, as the pool was built
    assert cfg.proxy is None
    assert server.received[-1][1]["authorization"] == f"Bearer {TOKEN}"
