"""`batchq reconcile-now`: ask a running reconciler for a pass now, and wait until it has
seen the branch head (as `flux reconcile --with-source` does).

The request is the `sync-requested` file in the state dir, the same one the webhook of a
separate `batchq web` leaves; the loop picks it up within a second. The branch head is read
with `git ls-remote`, and the wait ends when the store's synced commit is that head (or the
sync reports an error, which is printed). It only reads the store.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from reconciler.store.backends import BackendSettings, local_db_path, open_store
from reconciler.support.controlchars import escape_controls
from reconciler.support.redaction import redact_text


def branch_head(repo: str, branch: str, timeout: float) -> str:
    """The commit the branch points at in the repository the reconciler follows."""
    try:
        out = subprocess.run(["git", "ls-remote", "--", repo, f"refs/heads/{branch}"],
                             capture_output=True, text=True, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"batchq: git ls-remote {redact_text(repo)} gave no answer within"
                         f" {timeout:g} s") from None
    head = out.stdout.split()[0] if out.returncode == 0 and out.stdout.split() else ""
    if not head:
        why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "no such branch"
        raise SystemExit(f"batchq: cannot read branch {branch} of {redact_text(repo)}:"
                         f" {redact_text(why)}")
    return head


def reconcile_now(args: argparse.Namespace) -> int:
    """Exit 0 once the reconciler synced the head; 1 on a sync error or the timeout."""
    if not args.repo:
        raise SystemExit("batchq: --repo (or BATCHQ_REPO) is required: the repository the"
                         " reconciler follows")
    head = branch_head(args.repo, args.branch, args.timeout)
    if args.backend == "local":
        if not local_db_path(args.state).is_file():
            print(f"batchq: no reconciler state in {args.state}: start `batchq run` with"
                  " this --state first", file=sys.stderr)
            return 1
        (args.state / "sync-requested").touch()
    store = open_store(BackendSettings(backend=args.backend, state_dir=args.state,
                                       namespace=args.namespace, kubeconfig=args.kubeconfig))
    deadline = time.monotonic() + args.timeout
    try:
        error_before = store.load_sync_state().sync_error
        while True:
            state = store.load_sync_state()
            if state.synced_commit == head:
                print(f"reconciled: the reconciler has synced {head[:12]} of {args.branch}")
                return 0
            if state.sync_error and state.sync_error != error_before:
                print(escape_controls(f"batchq: the sync failed: {state.sync_error}"),
                      file=sys.stderr)
                return 1
            if time.monotonic() >= deadline:
                print(f"batchq: the reconciler did not sync {head[:12]} within"
                      f" {args.timeout:g} s (it last synced"
                      f" {(state.synced_commit or 'nothing')[:12]}); is `batchq run` running"
                      f" with --state {args.state}?", file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        store.close()
