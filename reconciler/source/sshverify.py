"""SSH commit signatures (OpenSSH's PROTOCOL.sshsig, namespace "git") verified in-process.

Why: git verifies each SSH-signed commit by starting `ssh-keygen -Y find-principals` and
`ssh-keygen -Y verify` (about 22 ms a commit), which makes verifying a push of 100 commits
cost 9x the sync itself. This module gives the same verdicts as git 2.39 with ssh-keygen
(the differential test in tests/test_signature_verification.py holds it to them), with the
`cryptography` package doing the arithmetic; git's own tooling stays available (policy
`verify: git`).

What git does, and so this module:
- the signature is the commit's `gpgsig` header (continuation lines start with a space);
  the signed payload is the commit object without it (and without a `gpgsig-*` header of
  another hash algorithm): `parse_buffer_signed_by_header` in git's commit.c;
- the armored SSHSIG blob names its public key; a key of the policy's signers gives its
  principal, and the signature must verify for namespace "git", hash sha256 or sha512,
  and must not be by a revoked key ("G", else "B");
- a key that is not the policy's: "U" when the signature verifies, else "B";
- `%GK` is the key's SHA256 fingerprint, given for "G" and "U" only.
Not supported (status "E", "cannot be checked", so never counted as signed): security-key
(sk-*) signatures, certificates, DSA keys; PGP and X.509 signatures (git would ask gpg).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_public_key,
)

SSH_ARMOR = b"-----BEGIN SSH SIGNATURE-----"
SSH_ARMOR_END = b"-----END SSH SIGNATURE-----"
OTHER_ARMORS = (b"-----BEGIN PGP SIGNATURE-----", b"-----BEGIN PGP MESSAGE-----",
                b"-----BEGIN SIGNED MESSAGE-----")
NAMESPACE = b"git"
HASHES = {b"sha256": hashlib.sha256, b"sha512": hashlib.sha512}
ECDSA_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}
RSA_SIGNATURES: dict[bytes, type[hashes.HashAlgorithm]] = {
    b"rsa-sha2-256": hashes.SHA256, b"rsa-sha2-512": hashes.SHA512}
RSA_MIN_BITS = 1024  # OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE
SUPPORTED_KEYS = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
                  "ecdsa-sha2-nistp521", "ssh-rsa")
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey


@dataclass(frozen=True)
class Verdict:
    """What git's %G?, %GS and %GK would say; `why` explains an "E"."""

    status: str
    principal: str = ""
    key: str = ""
    why: str = ""


class _Malformed(ValueError):
    """The blob is not a well-formed SSHSIG (git: a bad signature)."""


class _Unsupported(ValueError):
    """A well-formed signature this module does not check (git's tooling may)."""


class _Reader:
    """The SSH wire format (RFC 4251 §5): uint32 and length-prefixed strings."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.at:
            raise _Malformed("truncated")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def uint32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.uint32())

    def mpint(self) -> int:
        raw = self.string()
        if raw and raw[0] & 0x80:
            raise _Malformed("negative mpint")
        return int.from_bytes(raw, "big")

    def end(self) -> None:
        if self.at != len(self.data):
            raise _Malformed("trailing data")


def split_signed_commit(raw: bytes) -> tuple[bytes, bytes]:
    """(payload, signature) of a raw commit object, as git's
    parse_buffer_signed_by_header does it for SHA-1 repositories; b"" when unsigned."""
    payload, signature = bytearray(), bytearray()
    in_signature = other_signature = False
    at = 0
    while at < len(raw):
        nl = raw.find(b"\n", at)
        nxt = len(raw) if nl < 0 else nl + 1
        line = raw[at:nxt]
        sig: bytes | None = None
        if in_signature and line.startswith(b" "):
            sig = line[1:]
        elif line.startswith(b"gpgsig "):
            sig, other_signature = line[len(b"gpgsig "):], False
        elif line.startswith(b"gpgsig"):
            other_signature = True
        elif other_signature and not line.startswith(b" "):
            other_signature = False
        if sig is not None:
            signature += sig
            in_signature = True
        else:
            if line.startswith(b"\n"):
                nxt = len(raw)  # the message: the rest, as it is
                line = raw[at:]
            if not other_signature:
                payload += line
            in_signature = False
        at = nxt
    return bytes(payload), bytes(signature)


def _canonical(key: PublicKey) -> bytes:
    """The key's SSH wire encoding as OpenSSH writes it (what fingerprints hash)."""
    return base64.b64decode(key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1])


def fingerprint(blob: bytes) -> str:
    """`ssh-keygen -l`'s SHA256 fingerprint (git's %GK for SSH)."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _load_key(blob: bytes) -> tuple[PublicKey, bytes]:
    kind = _Reader(blob).string().decode("ascii", "replace")
    if kind not in SUPPORTED_KEYS:
        if kind.startswith("sk-") or kind.endswith("-cert-v01@openssh.com") or (
                kind == "ssh-dss"):  # OpenSSH's, not ours: "cannot be checked"
            raise _Unsupported(f"unsupported key type {kind}: sign with an ed25519 key (or"
                               " ecdsa, rsa), or set the access policy's verify: git")
        raise _Malformed(f"no such key type {kind}")
    try:
        key = load_ssh_public_key(kind.encode() + b" " + base64.b64encode(blob))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise _Malformed(str(exc)) from None
    if not isinstance(key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
                      | rsa.RSAPublicKey):
        raise _Unsupported(f"unsupported key type {kind}")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < RSA_MIN_BITS:
        raise _Malformed("RSA key too small")
    return key, _canonical(key)


def _check(key: PublicKey, blob: bytes, message: bytes) -> None:
    """InvalidSignature unless `blob` (string type, string data) signs `message`."""
    r = _Reader(blob)
    kind, data = r.string(), r.string()
    r.end()
    if isinstance(key, ed25519.Ed25519PublicKey):
        if kind != b"ssh-ed25519":
            raise InvalidSignature
        key.verify(data, message)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if kind != b"ecdsa-sha2-nistp" + key.curve.name[4:7].encode():  # secp256r1 -> 256
            raise InvalidSignature
        rs = _Reader(data)
        der = encode_dss_signature(rs.mpint(), rs.mpint())
        rs.end()
        key.verify(der, message, ec.ECDSA(ECDSA_HASHES[key.curve.name]()))
    else:
        if kind not in RSA_SIGNATURES:  # ssh-keygen takes no SHA-1 ("ssh-rsa") signature
            raise InvalidSignature
        key.verify(data, message, padding.PKCS1v15(), RSA_SIGNATURES[kind]())


def _dearmor(signature: bytes) -> bytes:
    body = signature[len(SSH_ARMOR):]
    end = body.find(SSH_ARMOR_END)
    if end < 0:
        raise _Malformed("no end marker")
    try:
        return base64.b64decode(b"".join(body[:end].split()), validate=True)
    except binascii.Error as exc:
        raise _Malformed(str(exc)) from None


class Verifier:
    """Verifies commits against the policy's keys: `signers` maps each key (an OpenSSH
    public key line) to its principal; `revoked` keys sign nothing."""

    def __init__(self, signers: Iterable[tuple[str, str]], revoked: Iterable[str]) -> None:
        self.principals: dict[bytes, str] = {}
        for principal, line in signers:
            blob = _policy_key(line)
            if blob is not None:
                self.principals[blob] = principal
        self.revoked = {b for b in map(_policy_key, revoked) if b is not None}

    def verify_commit(self, raw: bytes) -> Verdict:
        payload, signature = split_signed_commit(raw)
        if not signature:
            return Verdict("N")
        if not signature.startswith(SSH_ARMOR):
            kind = "GPG or X.509" if signature.startswith(OTHER_ARMORS) else "unknown"
            return Verdict("E", why=f"a signature of {kind} format: the access policy"
                           " checks SSH signatures")
        try:
            return self._verify(payload, _dearmor(signature))
        except _Unsupported as exc:
            return Verdict("E", why=str(exc))
        except (ValueError, InvalidSignature, struct.error):  # _Malformed, and anything
            return Verdict("B")  # a crafted blob makes the parsers raise: never a crash

    def _verify(self, payload: bytes, blob: bytes) -> Verdict:
        r = _Reader(blob)
        if r.take(6) != b"SSHSIG" or r.uint32() != 1:
            raise _Malformed("not an SSHSIG version 1 blob")
        key_blob, namespace, _reserved = r.string(), r.string(), r.string()
        hash_name, sig_blob = r.string(), r.string()
        r.end()
        key, canonical = _load_key(key_blob)
        if namespace != NAMESPACE or hash_name not in HASHES:
            raise InvalidSignature
        signed = (b"SSHSIG" + _string(NAMESPACE) + _string(b"") + _string(hash_name)
                  + _string(HASHES[hash_name](payload).digest()))
        _check(key, sig_blob, signed)
        principal = self.principals.get(canonical)
        if principal is None:
            return Verdict("U", key=fingerprint(canonical))
        if canonical in self.revoked:
            return Verdict("B")
        return Verdict("G", principal, fingerprint(canonical))


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _policy_key(line: str) -> bytes | None:
    """The canonical blob of a policy key line (None for a type this module cannot use:
    its signatures get "E" anyway)."""
    try:
        blob = base64.b64decode(line.split()[1])
        return _load_key(blob)[1]
    except (ValueError, IndexError, binascii.Error):
        return None
