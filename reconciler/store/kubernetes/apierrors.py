"""API failures said in one line an operator can act on.

The client's exceptions carry a whole HTTP response or a chain of urllib3 retries; the
loop logs one line per failure and `reconcile`/`status` exit with one, so this module
turns them into "what is wrong, and what to do".
"""

from __future__ import annotations

from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError as TransportError
from urllib3.exceptions import MaxRetryError

from reconciler.store.kubernetes.names import GROUP, PLURAL

CRD_FILE = "deploy/crds/batches.batchq.dev.yaml"
CRD_MISSING = (f"the Batch CustomResourceDefinition ({PLURAL}.{GROUP}) is not installed:"
               f" kubectl apply -f {CRD_FILE}")


def crd_missing(error: BaseException | None) -> bool:
    """A 404 listing batches: the API server does not know the resource at all."""
    return isinstance(error, ApiException) and error.status == 404


def api_failure(error: BaseException) -> bool:
    """Did an API call fail (an answer that is an error, or no answer at all)?"""
    return isinstance(error, ApiException | TransportError)


def transient(error: BaseException) -> bool:
    """Worth trying again: no answer, a server error, throttling, or a 401/403 (an API
    server that just restarted refuses requests until its authorizers are up)."""
    if isinstance(error, ApiException):
        return error.status in (401, 403, 429) or (error.status or 0) >= 500
    return isinstance(error, TransportError)


def describe(error: BaseException) -> str:
    """One line for any failure of an API call."""
    if isinstance(error, ApiException):
        reason = str(error.reason or "").strip()
        status = f"{error.status} {reason}".strip() if error.status else reason
        if error.status in (401, 403):
            return (f"the API server refused the request ({status}): right after an API"
                    " server restart this passes by itself; otherwise grant the reconciler"
                    " the RBAC of deploy/rbac.yaml")
        return f"the API server answered {status}"
    if isinstance(error, MaxRetryError):
        return f"cannot reach the API server: {error.reason}"
    if isinstance(error, TransportError | OSError):
        return f"cannot reach the API server: {error}"
    return f"{type(error).__name__}: {error}"


def cache_unavailable(kind: str, error: BaseException | None,
                      timeout: float | None = None) -> str:
    """Why the `kind` cache is not there: the CRD is missing, or the last failure."""
    if kind == "batches" and crd_missing(error):
        return CRD_MISSING
    waited = f" in {timeout:.0f} s" if timeout is not None else ""
    why = f": {describe(error)}" if error is not None else ""
    return f"the {kind} cache did not sync{waited}{why}"
