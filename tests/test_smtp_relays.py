"""Report email through relays that demand TLS and AUTH (issue 8 §4), as a site's relay
does: real aiosmtpd servers on loopback with a throw-away CA made by `openssl`, driven by
the real `batchq reconcile` and read back through `batchq status --json`."""

from __future__ import annotations

import email
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller as SmtpController
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.fixtures import GitRepo, PayloadServer, SmtpServer, batch_doc, batchq, free_port
from tests.fixtures import profile_doc as plain_profile

USER, PASSWORD = "reports", "s3cret pass"
DEPOSITOR = "jane@example.org"


@dataclass
class Pki:
    ca: Path  # the CA that signed the servers' certificate
    other_ca: Path  # a CA that signed nothing here
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def _openssl(d: Path, *args: str) -> None:
    proc = subprocess.run(["openssl", *args], cwd=d, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr


def _ca(d: Path, name: str) -> None:
    _openssl(d, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
             "-subj", f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command makes the test CA; it is not installed")
    d = tmp_path_factory.mktemp("pki")
    _ca(d, "ca")
    _ca(d, "other-ca")
    _openssl(d, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
    _openssl(d, "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return Pki(d / "ca.pem", d / "other-ca.pem", d / "server.pem", d / "server.key")


@dataclass
class RelayServer:
    """What a TLS/AUTH relay saw: every AUTH attempt, and each message with its session."""

    auth_attempts: int = 0
    messages: list[Message] = field(default_factory=list)
    sessions: list[tuple[bool, bool]] = field(default_factory=list)  # (over TLS, authed)
    port: int = field(default_factory=free_port)

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str,
                     auth_data: Any) -> AuthResult:
        self.auth_attempts += 1
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == USER.encode()
              and auth_data.password == PASSWORD.encode())
        return AuthResult(success=ok, handled=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if not session.authenticated:  # AUTH is required here
            return "530 5.7.0 Authentication required"
        self.messages.append(email.message_from_bytes(envelope.content))
        tls = server.transport.get_extra_info("ssl_object") is not None
        self.sessions.append((tls, bool(session.authenticated)))
        return "250 Message accepted for delivery"


@pytest.fixture
def starttls_relay(pki: Pki) -> Iterator[RelayServer]:
    """Port-587 style: STARTTLS required before anything else, AUTH required, over TLS."""
    relay = RelayServer()
    ctl = SmtpController(relay, hostname="127.0.0.1", port=relay.port,
                         tls_context=pki.server_context(), require_starttls=True,
                         auth_required=True, auth_require_tls=True,
                         authenticator=relay.authenticate)
    ctl.start()
    yield relay
    ctl.stop()


@pytest.fixture
def implicit_tls_relay(pki: Pki) -> Iterator[RelayServer]:
    """Port-465 style: TLS from the first byte, AUTH required."""
    relay = RelayServer()
    ctl = SmtpController(relay, hostname="127.0.0.1", port=relay.port,
                         ssl_context=pki.server_context(),
                         # aiosmtpd counts only STARTTLS as TLS, and warns when AUTH is
                         # required without it: handle_DATA refuses the unauthenticated
                         auth_require_tls=False, authenticator=relay.authenticate)
    ctl.start()
    yield relay
    ctl.stop()


def submit(repo: GitRepo, payloads: PayloadServer) -> None:
    repo.write("profiles/test.yaml", plain_profile(payloads.base))
    repo.write("batches/b.yaml", batch_doc([payloads.add("b-1", b"one\n")]))
    repo.commit("submit b")


def reconcile(repo: GitRepo, state: Path, relay: str, *options: str,
              password: str | None = PASSWORD) -> subprocess.CompletedProcess[str]:
    env = {"BATCHQ_SMTP_PASSWORD": password} if password is not None else {}
    return batchq("reconcile", "--repo", str(repo.path), "--state", str(state),
                  "--smtp", relay, "--smtp-backoff", "300", "--until-idle", "--timeout", "60",
                  *options, env=env)


def delivery(state: Path) -> dict[str, dict[str, Any]]:
    """The report's delivery, per recipient, as `batchq status --json` shows it."""
    out = batchq("status", "--state", str(state), "--json")
    assert out.returncode == 0, out.stderr
    [batch] = json.loads(out.stdout)["batches"]
    [report] = batch["reports"]
    return {d["recipient"]: d for d in report["delivery"]}


def test_starttls_and_auth_deliver_over_a_verified_tls_session(
        git_repo: GitRepo, payloads: PayloadServer, starttls_relay: RelayServer, pki: Pki,
        tmp_path: Path) -> None:
    submit(git_repo, payloads)
    done = reconcile(git_repo, tmp_path / "state", starttls_relay.hostport,
                     "--smtp-security", "starttls", "--smtp-ca-file", str(pki.ca),
                     "--smtp-user", USER)
    assert done.returncode == 0, done.stderr
    [message] = starttls_relay.messages
    assert message["Subject"] == "Ingest: OK -- Submission Processed: b"
    assert starttls_relay.sessions == [(True, True)]  # over TLS, authenticated
    assert delivery(tmp_path / "state")[DEPOSITOR]["state"] == "delivered"


def test_implicit_tls_with_the_password_from_a_mounted_secret_file(
        git_repo: GitRepo, payloads: PayloadServer, implicit_tls_relay: RelayServer, pki: Pki,
        tmp_path: Path) -> None:
    secret = tmp_path / "secret" / "password"
    secret.parent.mkdir()
    secret.write_text(PASSWORD + "\n")  # as `kubectl create secret --from-file` keeps it
    submit(git_repo, payloads)
    done = reconcile(git_repo, tmp_path / "state", implicit_tls_relay.hostport,
                     "--smtp-security", "tls", "--smtp-ca-file", str(pki.ca),
                     "--smtp-user", USER, "--smtp-password-file", str(secret), password=None)
    assert done.returncode == 0, done.stderr
    assert [m["Subject"] for m in implicit_tls_relay.messages] == [
        "Ingest: OK -- Submission Processed: b"]
    assert implicit_tls_relay.sessions == [(True, True)]


def test_a_wrong_password_is_shown_and_the_report_waits_for_the_right_one(
        git_repo: GitRepo, payloads: PayloadServer, starttls_relay: RelayServer, pki: Pki,
        tmp_path: Path) -> None:
    """535 defers (Postfix's smtp_sasl_auth_soft_bounce): the report is not lost to a
    mistyped or rotated password; it goes out once the operator fixes it."""
    submit(git_repo, payloads)
    state = tmp_path / "state"
    options = ("--smtp-security", "starttls", "--smtp-ca-file", str(pki.ca),
               "--smtp-user", USER, "--smtp-backoff", "1")
    done = reconcile(git_repo, state, starttls_relay.hostport, *options, password="wrong")
    assert done.returncode == 0, done.stderr
    assert starttls_relay.messages == []
    assert starttls_relay.auth_attempts >= 1
    seen = delivery(state)[DEPOSITOR]
    assert (seen["state"], seen["code"]) == ("deferred", 535)
    assert "Authentication credentials invalid" in seen["detail"]
    assert f"AUTH as {USER} at {starttls_relay.hostport}" in seen["detail"]
    # the operator fixes the password: the waiting report goes out, once
    time.sleep(1.1)  # the retry time the first run recorded (--smtp-backoff 1)
    again = reconcile(git_repo, state, starttls_relay.hostport, *options)
    assert again.returncode == 0, again.stderr
    assert [m["Subject"] for m in starttls_relay.messages] == [
        "Ingest: OK -- Submission Processed: b"]
    assert delivery(state)[DEPOSITOR]["state"] == "delivered"


def test_starttls_required_but_not_offered_sends_nothing_in_plaintext(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, pki: Pki,
        tmp_path: Path) -> None:
    submit(git_repo, payloads)
    done = reconcile(git_repo, tmp_path / "state", smtp.hostport, "--smtp-security",
                     "starttls", "--smtp-ca-file", str(pki.ca), "--smtp-user", USER)
    assert done.returncode == 0, done.stderr
    assert smtp.mailbox.messages == []
    seen = delivery(tmp_path / "state")[DEPOSITOR]
    assert seen["state"] == "deferred"  # as Postfix: kept until the relay offers TLS again
    assert seen["detail"] == (
        "the server does not offer STARTTLS, which --smtp-security starttls requires;"
        f" nothing was sent in plaintext ({smtp.hostport})")


@pytest.mark.parametrize("ca", ["other", "system"])
def test_a_relay_whose_certificate_is_not_trusted_gets_no_mail_and_no_password(
        git_repo: GitRepo, payloads: PayloadServer, implicit_tls_relay: RelayServer, pki: Pki,
        tmp_path: Path, ca: str) -> None:
    submit(git_repo, payloads)
    options = ["--smtp-ca-file", str(pki.other_ca)] if ca == "other" else []
    done = reconcile(git_repo, tmp_path / "state", implicit_tls_relay.hostport,
                     "--smtp-security", "tls", "--smtp-user", USER, *options)
    assert done.returncode == 0, done.stderr
    assert implicit_tls_relay.messages == [] and implicit_tls_relay.auth_attempts == 0
    seen = delivery(tmp_path / "state")[DEPOSITOR]
    assert seen["state"] == "deferred"
    assert seen["detail"].startswith("TLS: the server's certificate is not trusted:")
    assert "--smtp-ca-file" in seen["detail"]


@pytest.mark.parametrize(("options", "env", "says"), [
    (["--smtp-user", USER], {"BATCHQ_SMTP_PASSWORD": PASSWORD},
     "--smtp-user needs --smtp-security starttls or tls: a password is never sent in clear"),
    (["--smtp-security", "starttls", "--smtp-user", USER], {},
     "--smtp-user needs a password: set BATCHQ_SMTP_PASSWORD or give --smtp-password-file"),
    (["--smtp-security", "tls", "--smtp-user", USER, "--smtp-password-file", "/nonexistent/pw"],
     {}, "cannot read --smtp-password-file /nonexistent/pw: No such file or directory"),
    ([], {"BATCHQ_SMTP_SECURITY": "startls"},  # a typo never means plaintext
     "--smtp-security (or BATCHQ_SMTP_SECURITY) 'startls' is not one of none, starttls, tls"),
    (["--smtp-security", "tls", "--smtp-ca-file", "/nonexistent/ca.pem"], {},
     "--smtp-ca-file (or BATCHQ_SMTP_CA_FILE) /nonexistent/ca.pem: No such file or directory;"
     " give a PEM file of CA certificates"),
    (["--site-url", "javascript:alert(1)"], {},
     "is not an http or https base URL; give one such as https://batchq.example.org"),
])
def test_a_relay_setting_that_cannot_work_is_refused_at_start(
        git_repo: GitRepo, tmp_path: Path, options: list[str], env: dict[str, str],
        says: str) -> None:
    git_repo.commit("empty")
    out = batchq("reconcile", "--repo", str(git_repo.path), "--state", str(tmp_path / "s"),
                 "--smtp", "127.0.0.1:1", "--once", *options, env=env)
    assert out.returncode != 0
    assert says in out.stderr and "Traceback" not in out.stderr



def test_a_non_ascii_address_is_refused_at_its_line_and_costs_nothing_else(
        git_repo: GitRepo, payloads: PayloadServer, smtp: SmtpServer, tmp_path: Path) -> None:
    """Decided: refused at validation (the message could never be delivered through a
    relay without SMTPUTF8); the other batch of the same commit runs and reports."""
    git_repo.write("profiles/test.yaml", plain_profile(payloads.base))
    git_repo.write("batches/b.yaml", batch_doc([payloads.add("b-1", b"one\n")]))
    git_repo.write("batches/intl.yaml", batch_doc(
        [payloads.add("i-1", b"one\n")], depositor={"name": "Jöe", "email": "jöe@example.org"}))
    git_repo.commit("submit b and intl")
    state = tmp_path / "state"
    done = reconcile(git_repo, state, smtp.hostport, password=None)
    assert done.returncode == 0, done.stderr
    assert [m["Subject"] for m in smtp.mailbox.messages] == [
        "Ingest: OK -- Submission Processed: b"]
    line = next(n for n, text in enumerate(
        (git_repo.path / "batches/intl.yaml").read_text().splitlines(), 1)
        if "email:" in text)
    status = batchq("status", "--state", str(state), "intl")
    assert (f"batches/intl.yaml:{line}:12: spec.depositor.email: \"j\\u00f6e@example.org\" has"
            " non-ASCII characters, which a mail server without SMTPUTF8 cannot deliver; give"
            " an ASCII address (name@example.org)") in status.stdout + status.stderr
