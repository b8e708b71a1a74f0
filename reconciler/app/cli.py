"""The `batchq` command (DESIGN §7). Every option also comes from a BATCHQ_* variable.

User-facing help never cites the design document: it says what an option does."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import os
import re
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from reconciler.app.service import Reconciler, Settings
from reconciler.app.statelock import StateDirLocked
from reconciler.app.statustable import guidance, shown_state, table
from reconciler.app.validatecmd import FORMATS, validate_command
from reconciler.control.smtp import SECURITIES
from reconciler.domain.refusals import refusals_of
from reconciler.domain.states import JobState
from reconciler.manifests.repocheck import Finding
from reconciler.spec.policy import AccessPolicy, PolicyInvalid, load_policy
from reconciler.store.backends import BackendSettings, open_store, store_factory
from reconciler.store.base import Delivery, ReadStore, StoreUnavailable
from reconciler.support.controlchars import escape_controls
from reconciler.support.logfmt import formatter
from reconciler.support.nospace import (
    NoSpaceLeft,
    free_bytes,
    nearly_full,
    no_space_is_fatal,
    says_no_space,
)
from reconciler.support.timefmt import rfc3339_or_none

if TYPE_CHECKING:
    from flask import Flask


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"BATCHQ_{name}", default)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=["local", "kubernetes"],
                   default=_env("BACKEND", "local"),
                   help="where batches and jobs live: local (SQLite in the state dir, jobs as"
                        " local processes) or kubernetes (BATCHQ_BACKEND; default local)")
    p.add_argument("--state", type=Path, default=Path(_env("STATE", ".batchq") or ".batchq"),
                   help="state dir: the embedded store and the outbox (BATCHQ_STATE)")
    p.add_argument("--namespace", default=_env("NAMESPACE", "batchq"),
                   help="Kubernetes namespace of the Batch objects and Jobs"
                        " (BATCHQ_NAMESPACE; default batchq)")
    p.add_argument("--kubeconfig", default=_env("KUBECONFIG") or os.environ.get("KUBECONFIG"),
                   help="kubeconfig file (BATCHQ_KUBECONFIG, else KUBECONFIG; default: the"
                        " in-cluster service account)")
    p.add_argument("--storage-claim", default=_env("STORAGE_CLAIM", ""),
                   help="kubernetes: the PersistentVolumeClaim Jobs mount at the storage root"
                        " for filesystem storage (BATCHQ_STORAGE_CLAIM; deploy/ sets"
                        " batchq-storage; none: no volume, payloads stay in the pod)")
    p.add_argument("--s3-secret", default=_env("S3_SECRET", "batchq-s3"),
                   help="kubernetes: the Secret whose AWS_ACCESS_KEY_ID and"
                        " AWS_SECRET_ACCESS_KEY Jobs get for S3 storage (BATCHQ_S3_SECRET)")
    p.add_argument("--kube-concurrency", type=_at_least_one,
                   default=_env("KUBE_CONCURRENCY", "8"),
                   help="kubernetes: Jobs created at once in a pass (BATCHQ_KUBE_CONCURRENCY;"
                        " default 8)")
    p.add_argument("--kube-qps", type=float, default=_env("KUBE_QPS", "20"),
                   help="kubernetes: API writes a second, on average, like controller-runtime's"
                        " QPS (BATCHQ_KUBE_QPS; default 20; 0: no limit)")
    p.add_argument("--kube-burst", type=_at_least_one,
                   default=_env("KUBE_BURST", "30"),
                   help="kubernetes: API writes at once before --kube-qps applies"
                        " (BATCHQ_KUBE_BURST; default 30)")
    p.add_argument("--smtp", default=_env("SMTP"),
                   help="HOST:PORT of an SMTP relay (BATCHQ_SMTP); without it, emails are"
                        " written to STATE/outbox/")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log at INFO, not only warnings (`run` always does: one line per"
                        " batch and job transition)")
    p.add_argument("--log-format", choices=("text", "json"), default=_env("LOG_FORMAT", "text"),
                   help="text lines (event key=value ...) or JSON lines (BATCHQ_LOG_FORMAT)")


def _at_least_one(text: str) -> int:
    """A count flag's value: a whole number, 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1: give 1 or more")
    return value


def _niceness(text: str) -> int:
    """--job-nice: how many steps nicer than the reconciler jobs run, 0 to 19 (nice(1))."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number: give 0 to 19"
                                         ) from None
    if not 0 <= value <= 19:
        raise argparse.ArgumentTypeError(
            f"{value} is not a niceness from 0 to 19: give 0 to run jobs at the reconciler's"
            " priority, up to 19 for the lowest")
    return value


def _seconds(name: str, default: float) -> float:
    return float(_env(name) or default)


def _source(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repo", default=_env("REPO"), help="Git URL or path (BATCHQ_REPO)")
    p.add_argument("--branch", default=_env("BRANCH", "main"),
                   help="branch to follow (BATCHQ_BRANCH; default main)")
    p.add_argument("--interval", type=float, default=float(_env("INTERVAL", "10") or 10),
                   help="seconds between passes of the loop (BATCHQ_INTERVAL; default 10)")
    p.add_argument("--resync", type=float, default=float(_env("RESYNC") or 0),
                   help="seconds between passes that step every batch, not only those that"
                        " changed (BATCHQ_RESYNC; default 10 x interval, at least 30)")
    p.add_argument("--storage-root", type=Path, default=_env("STORAGE_ROOT"),
                   help="profiles' storage paths live under it (BATCHQ_STORAGE_ROOT;"
                        " default STATE/storage)")
    p.add_argument("--git-timeout", type=float, default=_seconds("GIT_TIMEOUT", 120),
                   help="seconds one git fetch may take in all (BATCHQ_GIT_TIMEOUT)")
    p.add_argument("--smtp-timeout", type=float, default=_seconds("SMTP_TIMEOUT", 120),
                   help="seconds one SMTP delivery may take in all (BATCHQ_SMTP_TIMEOUT)")
    p.add_argument("--smtp-backoff", type=float, default=_seconds("SMTP_BACKOFF", 5),
                   help="first wait before a deferred email is retried; it doubles"
                        " (BATCHQ_SMTP_BACKOFF)")
    p.add_argument("--smtp-max-age", type=float, default=_seconds("SMTP_MAX_AGE", 432000),
                   help="seconds after which a still deferred email is given up"
                        " (BATCHQ_SMTP_MAX_AGE; 5 days)")
    p.add_argument("--job-nice", type=_niceness, default=_env("JOB_NICE", "10"),
                   help="local backend: run jobs this much nicer than the reconciler, so a"
                        " busy machine does not starve the loop (BATCHQ_JOB_NICE; default 10;"
                        " 0: the reconciler's own priority)")
    p.add_argument("--message-id-domain", default=_env("MESSAGE_ID_DOMAIN"),
                   help="right-hand side of report Message-IDs (BATCHQ_MESSAGE_ID_DOMAIN;"
                   " default: a random one, made once per state)")
    _relay(p)
    _file_roots(p)
    _access_policy(p)


def _access_policy(p: argparse.ArgumentParser) -> None:
    """Who may change what: the operator's file, never the repository's."""
    p.add_argument("--access-policy", metavar="FILE", default=_env("ACCESS_POLICY"),
                   help="the access policy (kind AccessPolicy; BATCHQ_ACCESS_POLICY); without"
                        " it every commit applies (mode off)")


def access_policy(args: argparse.Namespace) -> AccessPolicy:
    """The access policy given, or mode off; a clear exit naming each problem's line."""
    if not args.access_policy:
        return AccessPolicy()
    try:
        return load_policy(args.access_policy)
    except PolicyInvalid as exc:
        raise SystemExit("\n".join(f"batchq: {escape_controls(str(p))}"
                                   for p in exc.problems)) from None


def _relay(p: argparse.ArgumentParser) -> None:
    """How the SMTP relay is reached; the password only from the environment or a file (a
    mounted Secret), never from the command line, where `ps` shows it."""
    p.add_argument("--smtp-security", choices=SECURITIES, default=_env("SMTP_SECURITY", "none"),
                   help="none, starttls (required, never plaintext) or tls (implicit, port"
                        " 465); the certificate is always verified (BATCHQ_SMTP_SECURITY)")
    p.add_argument("--smtp-ca-file", default=_env("SMTP_CA_FILE"),
                   help="PEM file of the CA the relay's certificate must chain to"
                        " (BATCHQ_SMTP_CA_FILE; default: the system's trust store)")
    p.add_argument("--smtp-user", default=_env("SMTP_USER"),
                   help="AUTH as this user (BATCHQ_SMTP_USER); the password comes from"
                        " BATCHQ_SMTP_PASSWORD or --smtp-password-file")
    p.add_argument("--smtp-password-file", default=_env("SMTP_PASSWORD_FILE"),
                   help="file holding the SMTP password, e.g. a mounted Secret"
                        " (BATCHQ_SMTP_PASSWORD_FILE)")
    p.add_argument("--site-url", default=_env("SITE_URL"),
                   help="the web site's base URL; reports then link the batch's page"
                        " (BATCHQ_SITE_URL)")


def smtp_password(args: argparse.Namespace) -> str | None:
    """The relay password: --smtp-password-file, else BATCHQ_SMTP_PASSWORD; a clear exit
    when the security is unknown, a user is set without a password, or a password would
    travel in clear."""
    if args.smtp_security not in SECURITIES:  # argparse checks choices, not env defaults
        raise SystemExit(f"batchq: --smtp-security (or BATCHQ_SMTP_SECURITY)"
                         f" {args.smtp_security!r} is not one of {', '.join(SECURITIES)}")
    if args.smtp_user is None:
        return None
    if args.smtp_security == "none":
        raise SystemExit("batchq: --smtp-user needs --smtp-security starttls or tls: a password"
                         " is never sent in clear")
    if args.smtp_password_file:
        try:
            with open(args.smtp_password_file, encoding="utf-8") as fh:
                return fh.read().rstrip("\r\n")
        except OSError as exc:
            raise SystemExit(f"batchq: cannot read --smtp-password-file"
                             f" {args.smtp_password_file}: {exc.strerror}") from None
    password = _env("SMTP_PASSWORD")
    if password is None:
        raise SystemExit("batchq: --smtp-user needs a password: set BATCHQ_SMTP_PASSWORD or"
                         " give --smtp-password-file")
    return password


def smtp_ca_file(value: str | None) -> str | None:
    """A CA file that loads, checked at start: a wrong path must not defer every email."""
    if value is not None:
        try:
            ssl.create_default_context(cafile=value)
        except (OSError, ssl.SSLError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SystemExit(f"batchq: --smtp-ca-file (or BATCHQ_SMTP_CA_FILE) {value}: {reason};"
                             " give a PEM file of CA certificates") from None
    return value


def site_url(value: str | None) -> str | None:
    """An http(s) base URL, without its trailing slash; a clear exit otherwise."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or (
            parts.fragment) or any(c.isspace() or not c.isprintable() for c in value):
        raise SystemExit(f"batchq: --site-url (or BATCHQ_SITE_URL) {value!r} is not an http"
                         " or https base URL; give one such as https://batchq.example.org")
    return value.rstrip("/")


def _file_roots(p: argparse.ArgumentParser) -> None:
    """Host directories absolute `file:` URLs may name: an operator's setting, never the
    repository's (a profile in Git cannot grant it)."""
    p.add_argument("--allow-file-root", dest="file_roots", action="append", metavar="DIR",
                   default=[d for d in (_env("ALLOW_FILE_ROOTS") or "").split(os.pathsep)
                            if d],
                   help="a host directory absolute file: URLs may name; repeat for more"
                        f" (BATCHQ_ALLOW_FILE_ROOTS, {os.pathsep}-separated)")


def file_roots(args: argparse.Namespace) -> tuple[str, ...]:
    """The operator's file roots as absolute paths (a job runs in its own directory)."""
    return tuple(os.path.abspath(d) for d in args.file_roots)


def _leader(p: argparse.ArgumentParser) -> None:
    """Leader election on Kubernetes, with client-go's flags and defaults."""
    p.add_argument("--leader-identity", default=_env("LEADER_IDENTITY"),
                   help="this replica's name in the Lease (BATCHQ_LEADER_IDENTITY; default"
                        " HOSTNAME-PID)")
    p.add_argument("--lease-duration", type=float, default=_seconds("LEASE_DURATION", 15),
                   help="seconds a silent leader keeps the Lease (BATCHQ_LEASE_DURATION)")
    p.add_argument("--renew-deadline", type=float, default=_seconds("RENEW_DEADLINE", 10),
                   help="seconds a leader that cannot renew goes on acting"
                        " (BATCHQ_RENEW_DEADLINE)")
    p.add_argument("--retry-period", type=float, default=_seconds("RETRY_PERIOD", 2),
                   help="seconds between renewals, or tries to get the Lease"
                        " (BATCHQ_RETRY_PERIOD)")


def lease_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The leader-election fields of Settings (`run` only); a clear exit for bad timings."""
    if not hasattr(args, "lease_duration"):
        return {}
    from reconciler.store.kubernetes.leader import LeaseTimings

    problem = LeaseTimings(args.lease_duration, args.renew_deadline, args.retry_period).check()
    if problem:
        raise SystemExit(f"batchq: {problem}: change --lease-duration, --renew-deadline or"
                         " --retry-period")
    return {"identity": args.leader_identity, "lease_seconds": args.lease_duration,
            "renew_deadline": args.renew_deadline, "retry_period": args.retry_period}


def _access_log(p: argparse.ArgumentParser) -> None:
    p.add_argument("--access-log", action="store_true",
                   default=(_env("ACCESS_LOG") or "") in ("1", "true", "yes"),
                   help="log every HTTP request of the site (BATCHQ_ACCESS_LOG=1); off by"
                        " default: /healthz probes would drown the transitions")


def setup_logging(args: argparse.Namespace) -> None:
    """One handler, credentials hidden, text or JSON lines; INFO for `run` (an operator
    follows the loop in its log) and with -v; the site's access lines only on request."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(getattr(args, "log_format", "text")))
    info = getattr(args, "verbose", False) or args.command == "run"
    logging.basicConfig(level=logging.INFO if info else logging.WARNING, handlers=[handler])
    logging.getLogger("werkzeug").setLevel(
        logging.INFO if getattr(args, "access_log", False) else logging.WARNING)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="batchq", description="A GitOps batch queue: depositors commit batch files, the"
        " reconciler runs one job per item and emails a report. Every option can also be set"
        " by the BATCHQ_* environment variable named in its help.")
    top.add_argument("--version", action="version", version=f"batchq {_version()}")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    v = sub.add_parser("validate", help="check batch, profile and queue files as the"
                       " reconciler will, before they are committed")
    v.add_argument("paths", nargs="+", metavar="PATH",
                   help="files, or directories to search for .yaml/.yml/.json files")
    v.add_argument("--format", dest="output", choices=FORMATS, default="text",
                   help="text (file:line:col: message), github (workflow-command annotations"
                        " for pull requests) or json")
    _file_roots(v)
    _access_policy(v)
    r = sub.add_parser("reconcile", help="one pass, or passes until idle")
    _common(r)
    _source(r)
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--once", action="store_true", help="one pass, then exit (the default)")
    mode.add_argument("--until-idle", action="store_true",
                      help="passes until nothing can progress without a new commit")
    r.add_argument("--timeout", type=float, default=3600.0,
                   help="with --until-idle: give up after this many seconds (default 3600)")
    run = sub.add_parser("run", help="the reconcile loop, with the web page")
    _common(run)
    _source(run)
    run.add_argument("--web", metavar="HOST:PORT", default=_env("WEB"),
                     help="also serve the status page here (BATCHQ_WEB)")
    _leader(run)
    _access_log(run)
    s = sub.add_parser("status", help="batches, jobs and reports")
    _common(s)
    s.add_argument("batch", nargs="?", metavar="BATCH",
                   help="only this batch (exit 1 when there is no such batch)")
    s.add_argument("--json", action="store_true",
                   help="print the status document as JSON (for tools)")
    w = sub.add_parser("web", help="serve the status page")
    _common(w)
    w.add_argument("--listen", default=_env("WEB", "127.0.0.1:8080"), metavar="HOST:PORT",
                   help="address to serve on (BATCHQ_WEB; default 127.0.0.1:8080)")
    w.add_argument("--server", choices=("gunicorn", "werkzeug"),
                   default=_env("WEB_SERVER", "gunicorn"),
                   help="gunicorn (worker processes, graceful stop on SIGTERM) or werkzeug's"
                        " threaded development server, one process (BATCHQ_WEB_SERVER;"
                        " default gunicorn); the four options below are gunicorn's")
    w.add_argument("--workers", type=_at_least_one, default=_env("WEB_WORKERS"),
                   help="worker processes (BATCHQ_WEB_WORKERS; default 2 x CPUs + 1, at"
                        " most 8)")
    w.add_argument("--threads", type=_at_least_one, default=_env("WEB_THREADS", "4"),
                   help="requests each worker serves at once (BATCHQ_WEB_THREADS; default 4)")
    w.add_argument("--timeout", type=_at_least_one, default=_env("WEB_TIMEOUT", "30"),
                   help="seconds a worker may be silent before it is killed and replaced"
                        " (BATCHQ_WEB_TIMEOUT; default 30)")
    w.add_argument("--graceful-timeout", type=_at_least_one,
                   default=_env("WEB_GRACEFUL_TIMEOUT", "25"),
                   help="on SIGTERM, seconds the requests in flight get to finish"
                        " (BATCHQ_WEB_GRACEFUL_TIMEOUT; default 25, under Kubernetes' 30 s"
                        " grace period)")
    _access_log(w)
    now = sub.add_parser("reconcile-now", help="ask a running reconciler for a pass now and"
                         " wait until it has synced the branch head")
    _common(now)
    now.add_argument("--repo", default=_env("REPO"),
                     help="the repository the reconciler follows (BATCHQ_REPO)")
    now.add_argument("--branch", default=_env("BRANCH", "main"),
                     help="its branch (BATCHQ_BRANCH; default main)")
    now.add_argument("--timeout", type=float, default=60.0,
                     help="seconds to wait for the reconciler (default 60)")
    pl = sub.add_parser("plan", help="what a commit would do, without doing it (reads only)")
    _common(pl)
    pl.add_argument("range", metavar="BASE..HEAD",
                    help="the commits to compare (e.g. main..my-branch, HEAD~1..HEAD); a single"
                         " revision compares it with the commit the store last synced")
    pl.add_argument("--repo", default=_env("REPO") or ".",
                    help="path of a local clone of the repository (BATCHQ_REPO; default .)")
    pl.add_argument("--format", dest="output", choices=("text", "json", "markdown"),
                    default="text", help="text, json, or markdown (a pull-request comment)")
    _access_policy(pl)  # its refusals of the range are shown, as the sync would make them
    pl.add_argument("--git-timeout", type=float, default=_seconds("GIT_TIMEOUT", 120),
                    help="seconds the signature check of the range may take"
                         " (BATCHQ_GIT_TIMEOUT; 120)")
    d = sub.add_parser("demo", help="run the whole story on the embedded default")
    d.add_argument("--keep", type=Path, help="keep the demo's repo and state here")
    return top


def _version() -> str:
    try:
        return importlib.metadata.version("batchq")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown"


DOMAIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*"
                    r"[A-Za-z0-9])?)*")


def settings_from(args: argparse.Namespace) -> Settings:
    if not getattr(args, "repo", None):
        raise SystemExit("batchq: --repo (or BATCHQ_REPO) is required")
    if args.resync < 0:
        raise SystemExit(f"batchq: --resync (or BATCHQ_RESYNC) {args.resync:g} is negative;"
                         " give the seconds between passes that step every batch (0: the"
                         " default, 10 x interval)")
    domain = args.message_id_domain
    if domain is not None and not DOMAIN.fullmatch(domain):
        raise SystemExit(f"batchq: --message-id-domain (or BATCHQ_MESSAGE_ID_DOMAIN) {domain!r}"
                         " is not a domain name; give one such as batchq.example.org")
    return Settings(repo=args.repo, branch=args.branch, state_dir=args.state,
                    backend=args.backend, namespace=args.namespace, smtp=args.smtp,
                    interval=args.interval, resync=args.resync or None,
                    kubeconfig=args.kubeconfig,
                    storage_claim=args.storage_claim, s3_secret=args.s3_secret,
                    kube_concurrency=args.kube_concurrency, kube_qps=args.kube_qps,
                    kube_burst=args.kube_burst,
                    file_roots=file_roots(args),
                    storage_root=Path(args.storage_root).absolute() if args.storage_root
                    else None,
                    git_timeout=args.git_timeout, smtp_timeout=args.smtp_timeout,
                    smtp_backoff=args.smtp_backoff, smtp_max_age=args.smtp_max_age,
                    message_id_domain=domain, smtp_security=args.smtp_security,
                    smtp_user=args.smtp_user, smtp_password=smtp_password(args),
                    smtp_ca_file=smtp_ca_file(args.smtp_ca_file), site_url=site_url(args.site_url),
                    access_policy=access_policy(args),
                    access_policy_file=args.access_policy or None,
                    job_nice=args.job_nice,
                    **lease_settings(args))


def backend_settings(args: argparse.Namespace) -> BackendSettings:
    return BackendSettings(backend=args.backend, state_dir=args.state,
                           namespace=args.namespace, kubeconfig=args.kubeconfig,
                           storage_claim=args.storage_claim, s3_secret=args.s3_secret,
                           kube_concurrency=args.kube_concurrency, kube_qps=args.kube_qps,
                           kube_burst=args.kube_burst)


def status_document(store: ReadStore, name: str | None = None) -> dict[str, Any]:
    """The `status --json` document, in exactly the shape DESIGN §7 gives."""
    batches = [b for b in store.list_batches() if name is None or b.name == name]
    refused = store.load_sync_state().access_refusals  # the access policy's refusals
    out = []
    for b in batches:
        jobs = [
            {"item": s.item.id, "name": s.job_name, "state": str(s.state),
             "attempt": s.attempts, "message": s.message,
             # beyond DESIGN §7's keys, small: the object's file count and identifiers
             "files": s.item.file_count(), "primaryId": s.item.primary_id,
             "localIds": list(s.item.local_ids)}
            for s in store.list_items(b.name)
        ]
        reports = [
            {"kind": r.kind, "createdAt": rfc3339_or_none(r.created_at, micro=True),
             "emailed": bool(r.emailed and store.delivered(r.id)),
             "changed": list(r.changed),
             "delivery": [{"recipient": d.address, "state": str(d.state), "code": d.code,
                           "detail": d.detail, "attempts": d.attempts, "at": rfc3339_or_none(d.at)}
                          for d in (store.recipient_states(r.id) if r.emailed else [])]}
            for r in store.list_reports(b.name)
        ]
        out.append({
            "name": b.name, "state": str(b.status.state), "generation": b.generation,
            "observedGeneration": b.status.observed_generation,
            "sourceRevision": b.source_revision, "jobs": jobs, "reports": reports,
            # beyond DESIGN §7's keys: why the batch waits or what went wrong with it
            "message": b.status.message,
            "conditions": [{"type": c.type, "status": c.status, "reason": c.reason,
                            "message": c.message} for c in b.status.conditions],
        })
        mine = refusals_of(refused, b.source_path)
        if mine:  # the access policy's refusals of its file: a key only when there are some
            out[-1]["refused"] = [r.to_dict() for r in mine]
    doc: dict[str, Any] = {"batches": out}
    if refused:  # every refusal, also of files that never became a batch
        doc["refused"] = [r.to_dict() for r in refusals_of(refused)]
    return doc


def _show(line: str, *, err: bool = False) -> None:
    """Print one line with its control characters escaped: names, titles and messages come
    from depositors' files and job output, and must not rewrite the operator's screen."""
    print(escape_controls(line), file=sys.stderr if err else sys.stdout)


def storage_errors(store: ReadStore, doc: dict[str, Any], state_dir: Path | None) -> list[str]:
    """Why writes may be failing: what the loop last met, how full the (local) state dir is
    now, and the jobs that failed for lack of space (they need a restart once there is)."""
    out = []
    recorded = store.load_sync_state().storage_error
    if recorded:
        out.append(recorded)
    free = free_bytes(state_dir) if state_dir is not None else None
    if state_dir is not None and free is not None and nearly_full(state_dir):
        out.append(f"the state dir {state_dir.absolute()} has only {free} bytes free: no job"
                   " starts and no email is sent until there is more")
    lacking = [f"{b['name']}/{j['item']}" for b in doc["batches"] for j in b["jobs"]
               if j["state"] == JobState.FAILED and says_no_space(j["message"])]
    if lacking:
        more = ", ..." if len(lacking) > 5 else ""
        out.append(f"{len(lacking)} job(s) failed for lack of space ({', '.join(lacking[:5])}"
                   f"{more}): free space, then commit spec.restarts for them")
    return out


def print_status(store: ReadStore, name: str | None, state_dir: Path | None = None) -> None:
    doc = status_document(store, name)
    refused = store.load_sync_state().access_refusals
    batches = store.list_batches()
    if name is None:  # the table first, as `flux get` prints it; then each batch in full
        for line in table(store, time.time()):
            print(line)
        if doc["batches"]:
            print()
    for b in doc["batches"]:
        batch = store.get_batch(b["name"])
        shown = shown_state(batch) if batch is not None else b["state"]
        _show(f"{b['name']}: {shown} (generation {b['generation']}, observed "
              f"{b['observedGeneration']}, commit {b['sourceRevision'][:12]})")
        if batch is not None and batch.spec_error:
            for line in batch.spec_error.split("\n"):
                _show(f"  file error: {line}")
        if batch is not None and batch.status.message:
            _show(f"  {batch.status.message}")
        for refusal in refusals_of(refused, batch.source_path if batch else ""):
            _show(f"  refused: {refusal.line()}")
        why, nxt = guidance(store, batch, batches) if batch is not None else ("", "")
        if why:
            _show(f"  why it has not started: {why}")
        for n, line in enumerate(nxt.split("\n") if nxt else []):
            _show(f"  next step: {line}" if n == 0 else f"    {line}")
        for c in b["conditions"]:  # Ready/Reconciling are the state, Invalid the file error
            if c["status"] and c["type"] not in ("Ready", "Reconciling", "Invalid"):
                _show(f"  {c['type']}: {c['message']}")
        for j in b["jobs"]:
            msg = f"  {j['message']}" if j["message"] else ""
            _show(f"  {j['item']:<20} {j['state']:<11} attempt {j['attempt']}{msg}")
        for r in b["reports"]:
            sent = "emailed" if r["emailed"] else "not emailed"
            changed = f", changed: {', '.join(r['changed'])}" if r["changed"] else ""
            _show(f"  report {r['kind']} at {r['createdAt']} ({sent}{changed})")
            for d in r["delivery"]:
                tries = "1 attempt" if d["attempts"] == 1 else f"{d['attempts']} attempts"
                _show(f"    to {d['recipient']}: {Delivery(d['state']).meaning} ({tries},"
                      f" last {d['at']}): {d['detail']}")
    state = store.load_sync_state()
    for err in state.file_errors.values():
        for line in err.split("\n"):  # one problem a line, as `batchq validate` prints
            _show(f"error: {line}", err=True)
    if state.sync_error:
        _show(f"sync error: {state.sync_error}", err=True)
    for problem in storage_errors(store, doc, state_dir):
        _show(f"storage error: {problem}", err=True)
    if state.deletion_refused:
        _show(f"warning: {state.deletion_refused}", err=True)
    for refusal in refusals_of(state.access_refusals):  # the access policy's (issue 11)
        _show(f"refused: {refusal.line()}", err=True)


def _open_site(args: argparse.Namespace, started: float) -> tuple[Flask, Callable[[], None]]:
    """`batchq web`'s site and what closes it; in each gunicorn worker, after the fork."""
    from web.app import create_app, site_settings

    factory, shared = store_factory(backend_settings(args))
    config: dict[str, Any] = {"STARTED_AT": started}  # /healthz's grace: the server's start
    if args.backend == "kubernetes":  # the loop runs in other pods: its Lease says how
        from reconciler.store.kubernetes.leader import lease_heartbeat
        from reconciler.store.kubernetes.store import KubernetesStore

        shared_store = factory()
        assert isinstance(shared_store, KubernetesStore)
        api, namespace = shared_store.api, args.namespace
        config["HEARTBEAT"] = lambda: lease_heartbeat(api, namespace)
    app = create_app(site_settings(factory, args.state, shared=shared, config=config))
    # a shared store's watch threads are stopped and joined before the process ends
    return app, (lambda: factory().close()) if shared else (lambda: None)


def _web(args: argparse.Namespace) -> int:
    """`batchq web`: gunicorn, or werkzeug's server with `--server werkzeug`."""
    started = time.time()
    if args.server == "werkzeug":
        from web.app import serve_app

        app, close = _open_site(args, started)
        try:
            serve_app(app, args.listen)
        finally:
            close()
        return 0
    from web.server import ServerOptions, default_workers, serve_gunicorn

    options = ServerOptions(
        listen=args.listen, workers=args.workers or default_workers(), threads=args.threads,
        timeout=args.timeout, graceful_timeout=args.graceful_timeout,
        access_log=args.access_log)
    serve_gunicorn(lambda: _open_site(args, started), options)  # ends the process itself
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    setup_logging(args)
    if args.command == "validate":
        policy: list[Finding] = []
        if args.access_policy:  # its problems first, in the same file:line:col form
            try:
                load_policy(args.access_policy)
            except PolicyInvalid as exc:
                policy = [Finding(problem) for problem in exc.problems]
        return validate_command(args.paths, file_roots=file_roots(args), output=args.output,
                                extra=policy)
    if args.command == "reconcile-now":
        from reconciler.app.syncnow import reconcile_now

        return reconcile_now(args)
    if args.command == "plan":
        from reconciler.app.plancmd import plan_command

        return plan_command(args)
    if args.command == "demo":
        from reconciler.app.demo import run_demo

        return run_demo(args.keep)
    if args.command == "status":
        try:
            with no_space_is_fatal(args.state):  # opening the store may need a little room
                store = open_store(backend_settings(args))
                try:
                    if args.batch is not None and store.get_batch(args.batch) is None:
                        names = sorted(b.name for b in store.list_batches())
                        known = f" (there are: {', '.join(names)})" if names else ""
                        _show(f"batchq: no batch named {args.batch!r}{known}", err=True)
                        return 1
                    if args.json:
                        json.dump(status_document(store, args.batch), sys.stdout, indent=2)
                        print()
                    else:
                        print_status(store, args.batch, args.state
                                     if args.backend == "local" else None)
                finally:
                    store.close()
        except (NoSpaceLeft, StoreUnavailable) as exc:
            _show(f"batchq: {exc}", err=True)
            return 1
        return 0
    if args.command == "web":
        return _web(args)
    stop = threading.Event()
    if args.command == "run":  # SIGTERM (a rollout, kubelet): stop acting, let the Lease go
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    try:
        with no_space_is_fatal(args.state):  # a supervisor restarts `run` (as kubelet does)
            rec = open_reconciler(settings_from(args), retry=args.command == "run", stop=stop)
    except StateDirLocked as exc:
        print(f"batchq: {exc}", file=sys.stderr)
        return 3
    except (NoSpaceLeft, StoreUnavailable) as exc:
        _show(f"batchq: {exc}", err=True)
        return 1
    if rec is None:  # stopped while waiting for the store
        return 0
    try:
        if args.command == "reconcile":
            try:
                with no_space_is_fatal(args.state):
                    if args.until_idle:
                        rec.run_until_idle(timeout=args.timeout)
                    else:
                        rec.run_once()
            except NoSpaceLeft as exc:  # one line, no traceback; the next run resumes
                _show(f"batchq: {exc}", err=True)
                return 1
            except Exception as exc:  # the API server failed us: one line, exit 1
                line = api_failure_line(args, exc)
                if line is None:
                    raise
                _show(f"batchq: {line}", err=True)
                return 1
            if rec.last_sync_error:  # the work went on from the last good commit
                _show(f"batchq: sync failed: {rec.last_sync_error}", err=True)
                return 1
            return 0
        if args.web:
            from web.app import serve_in_thread

            serve_in_thread(args, rec)
        try:
            rec.run_forever(stop)
        except KeyboardInterrupt:
            stop.set()
        return 0
    finally:
        rec.close()


def api_failure_line(args: argparse.Namespace, exc: Exception) -> str | None:
    """One line for a failed Kubernetes API call; None for any other exception."""
    if args.backend != "kubernetes":
        return None
    from reconciler.store.kubernetes.apierrors import api_failure, describe

    return describe(exc) if api_failure(exc) else None


def open_reconciler(settings: Settings, *, retry: bool,
                    stop: threading.Event) -> Reconciler | None:
    """A started Reconciler. `run` rides through a store that cannot be reached yet (the
    API server down, the CRD not installed): it says why and tries again after 1 s,
    doubling up to 30 s, until it can or `stop` is set (then None); the other commands
    raise StoreUnavailable at once."""
    delay = 1.0
    while True:
        try:
            return Reconciler(settings)
        except StoreUnavailable as exc:
            if not retry:
                raise
            logging.getLogger("batchq").error("%s; trying again in %g s", exc, delay)
        if stop.wait(delay):
            return None
        delay = min(delay * 2, 30.0)


if __name__ == "__main__":
    sys.exit(main())
