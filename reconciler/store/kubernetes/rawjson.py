"""Create an object from a plain dict, as JSON, through the client's own connection pool
and credentials, without its models.

The generated `create_namespaced_*` methods validate a dict body into a model (pydantic),
dump every sub-model back to a dict and sanitise it, then encode it: per Job that costs
more of the client's CPU than the rest of the create (bench/README.md, "Concurrent
creates"). Here the body is encoded once, the answer decoded once into a dict (what the
watch caches hold), and failures are the same `ApiException`s the generated methods raise
(status, reason, body), so callers read 409s and 5xx as before.
"""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

JSON = "application/json"
AUTH = ["BearerToken"]  # what every generated method asks for; client certs are in the pool


def create(api: client.ApiClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """POST `body` to `path` (e.g. /apis/batch/v1/namespaces/NS/jobs); the object the API
    server made, decoded."""
    method, url, headers, _, _ = api.param_serialize(
        "POST", path, header_params={"Accept": JSON, "Content-Type": JSON},
        auth_settings=AUTH)
    resp = api.call_api(method, url, headers, body=body)
    data = resp.read()
    if not 200 <= resp.status <= 299:
        raise ApiException.from_response(http_resp=resp, body=None, data=None)
    return dict(json.loads(data))


def finish(resp: Any) -> None:
    """Read the rest of a raw answer (`_preload_content=False`) that is not needed, so its
    connection goes back to the pool: one left unread holds its socket open until the
    garbage collector closes it (a ResourceWarning when that is in a cycle), and the next
    call opens a new connection, with a TLS handshake of its own."""
    resp.drain_conn()
    resp.release_conn()


def jobs_path(namespace: str) -> str:
    return f"/apis/batch/v1/namespaces/{namespace}/jobs"


def configmaps_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/configmaps"
