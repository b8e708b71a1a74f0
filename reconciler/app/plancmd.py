"""`batchq plan`: open what the plan compares (Git, and the store only if it exists), print
the plan in the format asked for. Nothing is created: not a state dir, not a store file."""

from __future__ import annotations

import argparse
import json
import sys

from reconciler.app.plan import PlanError, make_plan, markdown, text_lines
from reconciler.store.backends import BackendSettings, local_db_path, open_store
from reconciler.store.base import ReadStore
from reconciler.support.controlchars import escape_controls


def _store(args: argparse.Namespace) -> ReadStore | None:
    """The store to compare with; None for a local state dir that does not exist yet (the
    plan is then what a first sync would do)."""
    if args.backend == "local" and not local_db_path(args.state).is_file():
        return None
    return open_store(BackendSettings(backend=args.backend, state_dir=args.state,
                                      namespace=args.namespace, kubeconfig=args.kubeconfig))


def plan_command(args: argparse.Namespace) -> int:
    """Exit 0 with the plan; 1 when the range or repository cannot be read."""
    from reconciler.app.cli import access_policy  # (cli imports this module lazily)

    policy = access_policy(args)  # before anything is opened: a bad one exits naming lines
    store = _store(args)
    try:
        base, sep, head = args.range.partition("..")
        if not sep:
            base, head = "", args.range
            synced = store.load_sync_state().synced_commit if store is not None else None
            base = synced or ""
        plan = make_plan(args.repo, base or None, head or "HEAD", store, policy,
                         timeout=args.git_timeout)
    except PlanError as exc:
        print(f"batchq: {exc}", file=sys.stderr)
        return 1
    finally:
        if store is not None:
            store.close()
    if args.output == "json":
        json.dump(plan.as_json(), sys.stdout, indent=2)
        print()
    elif args.output == "markdown":
        for line in markdown(plan).splitlines():
            print(escape_controls(line))
    else:
        for line in text_lines(plan):
            for part in line.split("\n"):  # a file's several problems, one a line
                print(escape_controls(part))
    return 0
