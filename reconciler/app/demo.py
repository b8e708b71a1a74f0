"""`batchq demo`: the original use cases, end to end, on the embedded default.

It copies the bundled example repo (`manifests/`) into a temporary directory, commits it as
a depositor would, and runs the reconciler until idle: `maps-2026-11` completes, and
`letters-2026-11` fails because one payload has not been uploaded yet. Then the payload
arrives, an admin commits a restart, and later `state: UpdateReporting`; the update report
names the job that changed. States and reports are printed along the way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from email import message_from_bytes, policy
from pathlib import Path

import yaml

from reconciler.app.service import Reconciler, Settings
from reconciler.domain.states import BatchState, RequestedState

# the example repo beside the package in a checkout; an installed copy (the image) names
# where its copy is in BATCHQ_DEMO_REPO
BUNDLED = Path(os.environ.get("BATCHQ_DEMO_REPO")
               or Path(__file__).resolve().parents[2] / "manifests")
LATE_PAYLOAD = "payloads/letter-003.txt"
FAILING = "batches/letters-2026-11.yaml"


def _git(repo: Path, *args: str, who: str = "Jane Depositor <jane@example.org>") -> None:
    name, _, mail = who.partition(" <")
    env = {"GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": mail.rstrip(">"),
           "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": mail.rstrip(">"),
           "PATH": "/usr/bin:/bin:/usr/local/bin", "HOME": str(repo)}
    subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)


def _commit(repo: Path, message: str, who: str = "Jane Depositor <jane@example.org>") -> None:
    _git(repo, "add", "-A", who=who)
    _git(repo, "commit", "-q", "-m", message, who=who)
    print(f"\n$ git commit -m {message!r}   ({who})")


def _show(rec: Reconciler, seen: dict[str, str]) -> None:
    for b in rec.store.list_batches():
        items = rec.store.list_items(b.name)
        jobs = " ".join(f"{s.item.id}={s.state}" for s in items)
        line = f"  {b.name:<16} {b.status.state!s:<16} {jobs}"
        if seen.get(b.name) != line:
            seen[b.name] = line
            print(line)


def _run(rec: Reconciler, seen: dict[str, str]) -> None:
    rec.run_until_idle(timeout=50, on_pass=lambda r: _show(r, seen))


def _print_reports(state: Path, already: set[str]) -> None:
    for path in sorted((state / "outbox").glob("*.eml")):
        if path.name in already:
            continue
        already.add(path.name)
        msg = message_from_bytes(path.read_bytes(), policy=policy.default)
        print(f"\n--- email {path.name}")
        print(f"Subject: {msg['Subject']}\nTo: {msg['To']}")
        body = msg.get_body(preferencelist=("plain",))
        assert body is not None
        print(body.get_content().rstrip())
        names = [p.get_filename() for p in msg.iter_attachments()]
        print(f"[attachments: {', '.join(n for n in names if n)}]")


def run_demo(keep: Path | None = None) -> int:
    started = time.monotonic()
    work = keep or Path(tempfile.mkdtemp(prefix="batchq-demo-"))
    repo, state = work / "repo", work / "state"
    if repo.exists():
        shutil.rmtree(repo)
    if state.exists():
        shutil.rmtree(state)
    shutil.copytree(BUNDLED, repo)
    late = (repo / LATE_PAYLOAD).read_bytes()
    (repo / LATE_PAYLOAD).unlink()  # not uploaded yet: its job will fail
    _git(repo, "init", "-q", "-b", "main")
    print(f"batchq demo in {work}")
    _commit(repo, "Submit maps-2026-11 and letters-2026-11")
    rec = Reconciler(Settings(repo=str(repo), state_dir=state, interval=0.2))
    seen: dict[str, str] = {}
    emails: set[str] = set()
    try:
        _run(rec, seen)
        _print_reports(state, emails)

        (repo / LATE_PAYLOAD).write_bytes(late)
        doc = yaml.safe_load((repo / FAILING).read_text())
        doc["spec"]["restarts"] = {"letter-003": 1}
        (repo / FAILING).write_text(yaml.safe_dump(doc, sort_keys=False))
        _commit(repo, "Restart letter-003 now that its payload is uploaded",
                who="Alex Admin <admin@example.org>")
        _run(rec, seen)

        doc["spec"]["state"] = RequestedState.UPDATE_REPORTING.value
        (repo / FAILING).write_text(yaml.safe_dump(doc, sort_keys=False))
        _commit(repo, "UpdateReporting for letters-2026-11", who="Alex Admin <admin@example.org>")
        _run(rec, seen)
        _print_reports(state, emails)

        print("\nFinal states:")
        for b in rec.store.list_batches():
            print(f"  {b.name}: {b.status.state}")
        print(f"\nDone in {time.monotonic() - started:.1f} s. Reports are in {state / 'outbox'};"
              f" try: batchq status --state {state}")
        ok = {str(b.status.state) for b in rec.store.list_batches()} == {BatchState.COMPLETED}
        return 0 if ok else 1
    finally:
        rec.close()
