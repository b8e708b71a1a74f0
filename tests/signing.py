"""Real SSH keys and signed commits for the access-policy tests (and the bench).

Keys are made by `ssh-keygen` in the test's directory; commits are signed by git itself
(`git commit -S`, gpg.format=ssh), as a depositor or an admin signs on their own machine.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures import ADMIN, DEPOSITOR, GitRepo

OTHER = ("Olga Other", "olga@example.org")  # a second depositor
FORGE = ("Forge", "forge@git.example.org")  # GitHub's / GitLab's merge-commit key
STRANGER = ("Sam Stranger", "sam@example.org")  # has a key, not in the policy


class Keyring:
    """One ed25519 key per email, made with ssh-keygen under `directory`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.private: dict[str, Path] = {}

    def key(self, email: str) -> Path:
        if email not in self.private:
            path = self.directory / email.replace("@", "_at_")
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", email,
                            "-f", str(path)], check=True, capture_output=True)
            self.private[email] = path
        return self.private[email]

    def public(self, email: str) -> str:
        return Path(f"{self.key(email)}.pub").read_text().strip()


class SignedRepo(GitRepo):
    """A GitRepo whose commits are signed with the committer's key (when it has one)."""

    def __init__(self, path: Path, keys: Keyring, branch: str = "main") -> None:
        super().__init__(path, branch)
        self.keys = keys
        self.unsigned: set[str] = set()  # emails that commit without signing

    def signing(self, who: tuple[str, str]) -> list[str]:
        if who[1] in self.unsigned:
            return []
        return ["-c", "gpg.format=ssh", "-c", f"user.signingkey={self.keys.key(who[1])}"]

    def commit(self, message: str, who: tuple[str, str] = DEPOSITOR, *,
               sign: bool = True) -> str:
        self.git("add", "-A", who=who)
        flags = self.signing(who) if sign else []
        self.git(*flags, "commit", "-q", "--allow-empty", *(["-S"] if flags else []),
                 "-m", message, who=who)
        return self.git("rev-parse", "HEAD")

    def merge(self, branch: str, who: tuple[str, str], message: str) -> str:
        """A merge commit (--no-ff) signed by `who`, as a forge makes it."""
        flags = self.signing(who)
        self.git(*flags, "merge", "-q", "--no-ff", *(["-S"] if flags else []), "-m", message,
                 branch, who=who)
        return self.git("rev-parse", "HEAD")


def policy_doc(keys: Keyring, mode: str = "enforce", *, depositors: tuple[str, ...] = (
        DEPOSITOR[1], OTHER[1]), admins: tuple[str, ...] = (ADMIN[1],),
        forges: tuple[str, ...] = (FORGE[1],), revoked: tuple[str, ...] = ()) -> str:
    signers: list[dict[str, Any]] = []
    for role, emails in (("depositor", depositors), ("admin", admins), ("forge", forges)):
        signers += [{"principal": e, "role": role, "keys": [keys.public(e)]} for e in emails]
    spec: dict[str, Any] = {"mode": mode, "signers": signers}
    if revoked:
        spec["revokedKeys"] = [keys.public(e) for e in revoked]
    return yaml.safe_dump({"apiVersion": "batchq.dev/v1", "kind": "AccessPolicy",
                           "spec": spec}, sort_keys=False)
