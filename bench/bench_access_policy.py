"""Benchmark: verifying a push of N signed commits vs the same sync without verification
(issue 11: the goal is under 2x).

A repository gets an admin's profile, synced once; then N commits, each signed with
`git commit -S` (gpg.format=ssh) by one of five depositors, each adding or editing a batch
file of their own. Two fresh state dirs sync the base, then the N commits: one without a
policy (`GitSource.sync` + `apply_sync`), and one in mode enforce for each way of
verifying (`--verify`, default both; the same plus `access.authorize`: one `git log` stream,
then each signature checked, then each change judged): `builtin` checks each SSHSIG
in-process (one `git cat-file --batch` for the raw commits), `git` lets git run ssh-keygen
twice a commit. Each is measured `--rounds` times, interleaved in one run; the medians
are reported with their ratio to the sync without policy.
Run: `python bench/bench_access_policy.py [--commits 100] [--rounds 5] [--verify both]`;
figures in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import yaml

from reconciler.source.access import authorize
from reconciler.source.gitrepo import GitSource
from reconciler.source.sync import apply_sync
from reconciler.spec.policy import AccessPolicy, Mode, Role, Signer, Verification
from reconciler.store.local.sqlite import SqliteStore

PEOPLE = [f"dep{i}@example.org" for i in range(5)]
ADMIN = "admin@example.org"


def _git(root: Path, *args: str, who: str = ADMIN, key: Path | None = None) -> None:
    env = {"GIT_AUTHOR_NAME": who, "GIT_AUTHOR_EMAIL": who, "GIT_COMMITTER_NAME": who,
           "GIT_COMMITTER_EMAIL": who, "PATH": os.environ["PATH"], "HOME": str(root)}
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={key}"] if key else []
    subprocess.run(["git", *sign, *args], cwd=root, env=env, check=True, capture_output=True)


def _keys(directory: Path) -> dict[str, Path]:
    keys = {}
    for who in [*PEOPLE, ADMIN]:
        path = directory / who
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f",
                        str(path)], check=True, capture_output=True)
        keys[who] = path
    return keys


def _batch(who: str, n: int, title: str) -> str:
    return yaml.safe_dump({"apiVersion": "batchq.dev/v1", "kind": "Batch", "spec": {
        "profile": "bench", "depositor": {"name": who, "email": who},
        "manifest": {"items": [{"id": "item-1", "url": f"http://127.0.0.1/{n}",
                                "title": title}]}}}, sort_keys=False)


def make_repo(root: Path, keys: dict[str, Path], commits: int) -> str:
    """The base commit's sha; then `commits` signed commits on top."""
    (root / "batches").mkdir(parents=True)
    (root / "profiles").mkdir()
    (root / "profiles" / "bench.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batchq.dev/v1", "kind": "Profile",
        "spec": {"allowedUrlPrefixes": ["http://127.0.0.1/"]}}))
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-S", "-m", "profile", key=keys[ADMIN])
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
    _git(root, "branch", "bench-base")
    for n in range(commits):
        who = PEOPLE[n % len(PEOPLE)]
        batch = n % 20  # 20 files: the first commits add them, the rest edit them
        path = root / "batches" / f"b-{batch:03d}.yaml"
        owner = PEOPLE[batch % len(PEOPLE)]
        path.write_text(_batch(owner, batch, f"version {n}"))
        _git(root, "add", "-A", who=owner)
        _git(root, "commit", "-q", "-S", "-m", f"commit {n} by {who}", who=owner,
             key=keys[owner])
    return base


def policy(keys: dict[str, Path], verify: Verification) -> AccessPolicy:
    def public(who: str) -> str:
        return Path(f"{keys[who]}.pub").read_text().strip()

    return AccessPolicy(mode=Mode.ENFORCE, verify=verify, signers=tuple(
        [Signer(p, Role.DEPOSITOR, (public(p),)) for p in PEOPLE]
        + [Signer(ADMIN, Role.ADMIN, (public(ADMIN),))]))


def one_sync(repo: Path, base: str, state: Path, access: AccessPolicy | None) -> float:
    """Sync the base (not timed), then time the sync of the commits on top of it."""
    store = SqliteStore(state / "batchq.sqlite3")
    try:
        first = GitSource(str(repo), "bench-base", state / "git").sync(None)
        with store.transaction():
            apply_sync(store, first)
        source = GitSource(str(repo), "main", state / "git")
        t0 = time.monotonic()
        result = source.sync(base)
        if access is not None:
            live = {b.source_path for b in store.list_batches()}
            outcome = authorize(source, access, base, result, store.load_sync_state(), live,
                                timeout=600)
            assert not outcome.new_refusals, outcome.new_refusals[0].line()
            result = outcome.result
        with store.transaction():
            apply_sync(store, result)
        elapsed = time.monotonic() - t0
        assert len(store.list_batches()) == 20
        return elapsed
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--commits", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--verify", choices=["both", "builtin", "git"], default="both")
    args = ap.parse_args()
    ways = [Verification(v) for v in (["builtin", "git"] if args.verify == "both"
                                      else [args.verify])]
    with tempfile.TemporaryDirectory() as tmp:
        keys = _keys(Path(tmp))
        repo = Path(tmp) / "repo"
        base = make_repo(repo, keys, args.commits)
        plain: list[float] = []
        verified: dict[Verification, list[float]] = {v: [] for v in ways}
        for r in range(args.rounds):
            plain.append(one_sync(repo, base, Path(tmp) / f"plain-{r}", None))
            for v in ways:
                verified[v].append(one_sync(repo, base, Path(tmp) / f"{v}-{r}",
                                            policy(keys, v)))
    off = statistics.median(plain)
    out: dict[str, object] = {"commits": args.commits, "rounds": args.rounds,
                              "sync_seconds": round(off, 3)}
    for v, times in verified.items():
        on = statistics.median(times)
        out[str(v)] = {"verified_sync_seconds": round(on, 3), "ratio": round(on / off, 2),
                       "goal_under_2x": on < 2 * off,
                       "verify_ms_per_commit": round(1000 * (on - off) / args.commits, 2)}
    out.update(load_average=[round(x, 2) for x in os.getloadavg()], cpus=os.cpu_count())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
