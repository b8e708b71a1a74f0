"""The builtin signature check (source/sshverify.py) against git's own (issue 11).

A DIFFERENTIAL test: one repository holds commits signed every way that matters, made by
real tools (ssh-keygen keys of each type, `git commit -S` with gpg.format=ssh, a gpg-signed
commit, a signed tag merged with its mergetag header) and raw commit objects written with
`git hash-object` for what no tool makes (a tampered payload or signature, a signature
for another namespace, a second-algorithm `gpgsig-sha256` header). `read_commits` reads the
range with `verify: builtin` and with `verify: git` (ssh-keygen run by git), and both must
name the same signer with the same status and key for every commit; each commit's
expected status is asserted too, so the two cannot agree on a wrong answer.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from reconciler.source.signatures import CommitRecord, read_commits
from reconciler.spec.policy import AccessPolicy, Mode, Role, Signer, Verification, load_policy
from tests.fixtures import GitRepo, batchq

KEYS = {  # name -> ssh-keygen arguments
    "ed25519": ["-t", "ed25519"],
    "ecdsa256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa521": ["-t", "ecdsa", "-b", "521"],
    "rsa": ["-t", "rsa", "-b", "2048"],
    "stranger": ["-t", "ed25519"],  # not in the policy
    "revoked": ["-t", "ed25519"],  # in the policy, and revoked
    "revoked-stranger": ["-t", "ed25519"],  # revoked, not in the policy
    "forge": ["-t", "ed25519"],
}
IN_POLICY = ("ed25519", "ecdsa256", "ecdsa384", "ecdsa521", "rsa", "revoked", "forge")


def who(name: str) -> tuple[str, str]:
    return (name, f"{name}@example.org")


class Lab:
    """Keys, a repository, and the commits under test by case name."""

    def __init__(self, tmp: Path) -> None:
        self.keydir = tmp / "keys"
        self.keydir.mkdir()
        for name, args in KEYS.items():
            subprocess.run(["ssh-keygen", "-q", *args, "-N", "", "-C", name, "-f",
                            str(self.keydir / name)], check=True, capture_output=True)
        self.repo = GitRepo(tmp / "repo")
        self.cases: dict[str, str] = {}
        self.sk_public = ""  # the security key's public key line, once made

    def public(self, name: str) -> str:
        return (self.keydir / f"{name}.pub").read_text().strip()

    def signed(self, case: str, key: str, *extra: str) -> str:
        self.repo.write(f"files/{case}", case)
        self.repo.git("add", "-A", who=who(key))
        self.repo.git("-c", "gpg.format=ssh", "-c", f"user.signingkey={self.keydir / key}",
                      *extra, "commit", "-q", "-S", "-m", case, who=who(key))
        return self.head(case)

    def head(self, case: str) -> str:
        self.cases[case] = self.repo.git("rev-parse", "HEAD")
        return self.cases[case]

    def raw(self, sha: str) -> bytes:
        return subprocess.run(["git", "cat-file", "commit", sha], cwd=self.repo.path,
                              capture_output=True, check=True).stdout

    def write_object(self, case: str, raw: bytes) -> str:
        self.cases[case] = write_commit_object(self.repo.path, raw)
        return self.cases[case]

    def sign_raw(self, case: str, payload: bytes, key: str, *options: str,
                 extra_header: bytes = b"") -> str:
        """`payload` (an unsigned commit object) with a gpgsig header that ssh-keygen made
        with `options` (e.g. -n file), as git inserts it: after the other headers."""
        sig = subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(self.keydir / key),
                              *options], input=payload, capture_output=True,
                             check=True).stdout.strip()
        return self.write_object(case, add_header(payload, b"gpgsig", sig) + extra_header)

    def policy(self, verify: Verification) -> AccessPolicy:
        signers = tuple(Signer(who(n)[1], Role.FORGE if n == "forge" else Role.ADMIN,
                               (self.public(n),)) for n in IN_POLICY)
        return AccessPolicy(mode=Mode.ENFORCE, signers=signers, verify=verify,
                            revoked_keys=(self.public("revoked"),
                                          self.public("revoked-stranger")))

    def read(self, verify: Verification,
             cases: dict[str, str] | None = None) -> dict[str, CommitRecord]:
        shas = (self.cases if cases is None else cases).values()
        records = read_commits(self.repo.path / ".git", self.policy(verify),
                               sorted(set(shas)), timeout=120)
        return {r.sha: r for r in records}


def write_commit_object(repo: Path, raw: bytes) -> str:
    """`raw` stored as a commit object, as no tool would make it."""
    return subprocess.run(["git", "hash-object", "-t", "commit", "-w", "--stdin"], cwd=repo,
                          input=raw, capture_output=True, check=True).stdout.decode().strip()


def add_header(obj: bytes, name: bytes, value: bytes) -> bytes:
    """`obj` with a header `name value` (continuation lines start with a space) last."""
    head, sep, body = obj.partition(b"\n\n")
    return head + b"\n" + name + b" " + value.replace(b"\n", b"\n ") + sep + body


def unsigned_payload(lab: Lab, case: str) -> bytes:
    lab.repo.write(f"files/{case}", case)
    lab.repo.commit(case, who=who("ed25519"))
    return lab.raw(lab.repo.git("rev-parse", "HEAD"))


def sk_signed(lab: Lab, payload: bytes) -> str:
    """A commit signed as a FIDO security key signs (sk-ssh-ed25519@openssh.com,
    PROTOCOL.u2f), made with `cryptography` since no test machine has the hardware."""
    def string(b: bytes) -> bytes:
        return struct.pack(">I", len(b)) + b

    private = ed25519.Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    kind, app = b"sk-ssh-ed25519@openssh.com", b"ssh:"
    key_blob = string(kind) + string(public) + string(app)
    wrapped = (b"SSHSIG" + string(b"git") + string(b"") + string(b"sha512")
               + string(hashlib.sha512(payload).digest()))
    flags, counter = b"\x01", struct.pack(">I", 7)
    signed = hashlib.sha256(app).digest() + flags + counter + hashlib.sha256(wrapped).digest()
    sig_blob = string(kind) + string(private.sign(signed)) + flags + counter
    blob = (b"SSHSIG" + struct.pack(">I", 1) + string(key_blob) + string(b"git")
            + string(b"") + string(b"sha512") + string(sig_blob))
    b64 = base64.b64encode(blob).decode()
    armored = "\n".join(["-----BEGIN SSH SIGNATURE-----",
                         *[b64[i:i + 70] for i in range(0, len(b64), 70)],
                         "-----END SSH SIGNATURE-----"]).encode()
    lab.sk_public = f"{kind.decode()} {base64.b64encode(key_blob).decode()}"
    return lab.write_object("sk-ed25519", add_header(payload, b"gpgsig", armored))


EXPECTED = {  # case -> (status, principal)
    "good-ed25519": ("G", "ed25519@example.org"),
    "good-ecdsa256": ("G", "ecdsa256@example.org"),
    "good-ecdsa384": ("G", "ecdsa384@example.org"),
    "good-ecdsa521": ("G", "ecdsa521@example.org"),
    "good-rsa": ("G", "rsa@example.org"),
    "good-sha256-hash": ("G", "ed25519@example.org"),
    "second-algorithm-header": ("G", "ed25519@example.org"),
    "unsigned": ("N", ""),
    "unknown-key": ("U", ""),
    "revoked-key": ("B", ""),
    "revoked-key-not-in-policy": ("U", ""),
    "tampered-payload": ("B", ""),
    "tampered-signature": ("B", ""),
    "namespace-file": ("B", ""),
    "namespace-file-unknown-key": ("B", ""),
    "forge-merge": ("G", "forge@example.org"),
    "merge-of-signed-tag": ("G", "forge@example.org"),
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Lab:
    lab = Lab(tmp_path_factory.mktemp("signatures"))
    for name in ("ed25519", "ecdsa256", "ecdsa384", "ecdsa521", "rsa"):
        lab.signed(f"good-{name}", name)
    lab.signed("unknown-key", "stranger")
    lab.signed("revoked-key", "revoked")
    lab.signed("revoked-key-not-in-policy", "revoked-stranger")
    lab.repo.write("files/unsigned", "x")
    lab.repo.commit("unsigned", who=who("ed25519"))
    lab.head("unsigned")
    good = lab.raw(lab.cases["good-ed25519"])
    lab.write_object("tampered-payload", good.replace(b"\n\ngood-ed25519", b"\n\nevil-ed25519"))
    head, sep, body = good.partition(b"\n\n")
    lines = head.split(b"\n")
    end = lines.index(b" -----END SSH SIGNATURE-----")
    last = bytearray(lines[end - 2])  # inside the signature bytes, not its lengths
    last[5] = ord("A") if last[5] != ord("A") else ord("B")
    lines[end - 2] = bytes(last)
    lab.write_object("tampered-signature", b"\n".join(lines) + sep + body)
    payload = unsigned_payload(lab, "namespace")
    lab.sign_raw("namespace-file", payload, "ed25519", "-n", "file")
    lab.sign_raw("namespace-file-unknown-key", payload, "stranger", "-n", "file")
    lab.sign_raw("good-sha256-hash", payload, "ed25519", "-n", "git", "-O", "hashalg=sha256")
    other = b"-----BEGIN SSH SIGNATURE-----\nAAAA\n-----END SSH SIGNATURE-----"
    sig = subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(lab.keydir / "ed25519"), "-n",
                          "git"], input=payload, capture_output=True, check=True).stdout.strip()
    lab.write_object("second-algorithm-header",  # git leaves it out of the signed payload
                     add_header(add_header(payload, b"gpgsig-sha256", other), b"gpgsig", sig))
    # a forge's merge of a branch, and of a signed tag (its mergetag header is signed too)
    base = lab.repo.git("rev-parse", "HEAD")
    lab.repo.git("checkout", "-q", "-b", "topic")
    lab.signed("topic", "ed25519")
    lab.repo.git("-c", "gpg.format=ssh", "-c", f"user.signingkey={lab.keydir / 'ed25519'}",
                 "tag", "-s", "-m", "release", "v1", who=who("ed25519"))
    lab.repo.git("checkout", "-q", "main")
    lab.repo.git("reset", "-q", "--hard", base)
    sign = ["-c", "gpg.format=ssh", "-c", f"user.signingkey={lab.keydir / 'forge'}"]
    lab.repo.git(*sign, "merge", "-q", "--no-ff", "-S", "-m", "forge merge", "topic",
                 who=who("forge"))
    lab.head("forge-merge")
    lab.repo.git("reset", "-q", "--hard", base)
    lab.repo.git(*sign, "merge", "-q", "--no-ff", "-S", "-m", "merge v1", "v1",
                 who=who("forge"))
    assert b"\nmergetag object " in lab.raw(lab.head("merge-of-signed-tag"))
    return lab


def test_builtin_and_git_give_every_commit_the_same_signer(lab: Lab) -> None:
    builtin, by_git = lab.read(Verification.BUILTIN), lab.read(Verification.GIT)
    assert set(builtin) == set(by_git)
    for case, sha in lab.cases.items():
        mine, git = builtin[sha].signature, by_git[sha].signature
        if case in EXPECTED:
            assert (mine.status, mine.principal) == EXPECTED[case], case
        assert (mine.status, mine.principal, mine.role, mine.key) == (
            git.status, git.principal, git.role, git.key), case
        assert mine.label == git.label, case
        assert builtin[sha].changes == by_git[sha].changes, case
    fingerprints = {c: builtin[lab.cases[c]].signature.key for c in ("good-rsa", "unknown-key")}
    for case, key in (("good-rsa", "rsa"), ("unknown-key", "stranger")):
        listed = subprocess.run(["ssh-keygen", "-lf", str(lab.keydir / f"{key}.pub")],
                                capture_output=True, text=True, check=True).stdout
        assert fingerprints[case] == listed.split()[1]


@pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")
def test_a_gpg_signature_counts_as_unsigned_both_ways(lab: Lab, tmp_path: Path) -> None:
    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    env = dict(os.environ, GNUPGHOME=str(home))
    subprocess.run(["gpg", "--batch", "--passphrase", "", "--quick-gen-key", "P <p@example.org>",
                    "ed25519", "sign", "never"], env=env, check=True, capture_output=True)
    repo = GitRepo(tmp_path / "repo")
    repo.write("a", "a")
    repo.git("add", "-A")
    subprocess.run(["git", "-c", "gpg.format=openpgp", "-c", "user.signingkey=p@example.org",
                    "-c", "user.name=P", "-c", "user.email=p@example.org", "commit", "-q",
                    "-S", "-m", "pgp"], cwd=repo.path, env=env, check=True,
                   capture_output=True)
    policy = lab.policy(Verification.BUILTIN)
    [mine] = read_commits(repo.path / ".git", policy, ["HEAD"], timeout=60)
    [git] = read_commits(repo.path / ".git", dataclasses.replace(
        policy, verify=Verification.GIT), ["HEAD"], timeout=60)
    assert (mine.signature.status, mine.signature.principal, mine.signature.role) == (
        git.signature.status, git.signature.principal, git.signature.role) == ("E", "", None)
    assert mine.signature.label == ("unsigned (a signature of GPG or X.509 format: the access"
                                    " policy checks SSH signatures)")


def test_a_signature_header_git_cannot_parse_is_unsigned_and_stops_nothing(lab: Lab) -> None:
    payload = lab.raw(lab.cases["unsigned"])
    bad = lab.write_object("garbage", add_header(payload, b"gpgsig", b"hello world"))
    policy = lab.policy(Verification.BUILTIN)
    [record] = read_commits(lab.repo.path / ".git", policy, [bad, f"^{bad}^"], timeout=60)
    assert (record.signature.status, record.signature.label) == (
        "E", "unsigned (a signature of unknown format: the access policy checks SSH"
        " signatures)")
    died = subprocess.run(["git", "log", "-1", "--format=%G?", bad], cwd=lab.repo.path,
                          capture_output=True, text=True)
    assert "bad/incompatible signature" in died.stderr  # git itself dies on it, so
    by_git = {r.sha: r.signature for r in read_commits(  # one by one, and the rest count
        lab.repo.path / ".git", dataclasses.replace(policy, verify=Verification.GIT), [bad],
        timeout=60)}
    assert (by_git[bad].status, by_git[bad].label) == (
        "E", "unsigned (git could not check this signature)")
    assert by_git[lab.cases["good-rsa"]].principal == "rsa@example.org"


def test_a_security_key_signature_is_refused_not_passed(lab: Lab) -> None:
    """sk-* keys: ssh-keygen verifies them (git says G); the builtin check does not, and
    says so instead of counting the commit as signed."""
    payload = lab.raw(lab.cases["unsigned"])
    sha = sk_signed(lab, payload)
    policy = dataclasses.replace(lab.policy(Verification.BUILTIN), signers=(
        Signer("sk@example.org", Role.ADMIN, (lab.sk_public,)),))
    [mine] = read_commits(lab.repo.path / ".git", policy, [sha, f"^{sha}^"], timeout=60)
    [git] = read_commits(lab.repo.path / ".git", dataclasses.replace(
        policy, verify=Verification.GIT), [sha, f"^{sha}^"], timeout=60)
    assert (git.signature.status, git.signature.principal) == ("G", "sk@example.org")
    assert (mine.signature.status, mine.signature.principal, mine.signature.role) == (
        "E", "", None)
    assert mine.signature.label == (
        "unsigned (unsupported key type sk-ssh-ed25519@openssh.com: sign with an ed25519 key"
        " (or ecdsa, rsa), or set the access policy's verify: git)")


def test_a_policy_with_a_security_key_names_its_line_unless_git_verifies(
        lab: Lab, tmp_path: Path) -> None:
    sk = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t sk@desk"
    body = ("apiVersion: batchq.dev/v1\nkind: AccessPolicy\nspec:\n  mode: enforce\n{}"
            "  signers:\n    - principal: admin@example.org\n      role: admin\n"
            f"      keys:\n        - \"{lab.public('ed25519')}\"\n        - \"{sk}\"\n")
    policy, repo = tmp_path / "policy.yaml", tmp_path / "repo"
    repo.mkdir()
    policy.write_text(body.format(""))
    out = batchq("validate", "--access-policy", str(policy), str(repo))
    assert out.returncode == 1
    assert out.stdout.splitlines() == [
        f"{policy}:10:11: spec.signers[0].keys[1]: a security-key (sk-ssh-ed25519@openssh.com)"
        " signature is checked only with spec.verify: git; give an ed25519 key, or set"
        " verify: git"]
    policy.write_text(body.format("  verify: git\n"))
    assert load_policy(policy).verify == Verification.GIT


def test_every_mangled_signature_gets_gits_verdict_and_crashes_nothing(lab: Lab) -> None:
    """One byte of a good SSHSIG blob changed at 40 places spread over it (magic, version,
    each length, the key, namespace, hash name, signature): both ways agree on each, and
    none is taken as good. git 2.39 itself sometimes dies there (SIGPIPE: ssh-keygen
    rejects the blob before reading the payload git writes to it; `verify: git` then says
    "git could not check this signature"), and there the builtin check must say "bad"."""
    good = lab.raw(lab.cases["good-ecdsa256"])
    head, sep, body = good.partition(b"\n\n")
    start, end = head.index(b"gpgsig "), head.index(b"-----END SSH SIGNATURE-----")
    armored = head[start + len(b"gpgsig "):end + len(b"-----END SSH SIGNATURE-----")]
    blob = base64.b64decode(b"".join(armored.replace(b"\n ", b"\n").splitlines()[1:-1]))
    mangled: dict[str, str] = {}
    for n, at in enumerate(sorted({i * len(blob) // 40 for i in range(40)})):
        changed = bytearray(blob)
        changed[at] ^= 0x01 if n % 2 else 0x80
        b64 = base64.b64encode(bytes(changed)).decode()
        text = "\n".join(["-----BEGIN SSH SIGNATURE-----",
                          *[b64[i:i + 70] for i in range(0, len(b64), 70)],
                          "-----END SSH SIGNATURE-----"]).encode()
        mangled[f"byte-{at}"] = write_commit_object(lab.repo.path, head[:start] + b"gpgsig "
                                                    + text.replace(b"\n", b"\n ")
                                                    + head[end + 27:] + sep + body)
    builtin = lab.read(Verification.BUILTIN, mangled)
    for case, sha in mangled.items():
        mine = builtin[sha].signature
        assert mine.status != "G", case
        [record] = read_commits(lab.repo.path / ".git", lab.policy(Verification.GIT),
                                [sha, f"^{sha}^"], timeout=60)
        git = record.signature
        if git.label == "unsigned (git could not check this signature)":
            assert mine.status == "B", case  # git died (SIGPIPE); it counts as unsigned
            continue
        assert (mine.status, mine.principal, mine.key) == (git.status, git.principal,
                                                           git.key), case
