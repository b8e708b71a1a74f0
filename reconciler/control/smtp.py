"""One SMTP transaction for a queued email: an overall deadline, and a reply per recipient.

The rules are Postfix's. A reply is per recipient: a 5xx to RCPT refuses that recipient
for good, and the reply to DATA applies to every recipient RCPT accepted (5xx: refused
for good, 4xx: try again later). A 5xx to MAIL FROM refuses the message for everyone.
Everything else that goes wrong — no connection, a greeting or EHLO that is not 2xx (as
Postfix's `smtp_skip_5xx_greeting`), a 4xx, 421, a disconnect, the deadline — is
transient: the recipients it leaves undecided are tried again later.

A socket timeout bounds each read, not the conversation: a server that trickles its
greeting a byte a second would hold the sender forever. The whole transaction therefore
runs under one `SocketDeadline`, which shuts the socket down when it passes, TLS
handshakes included.

A relay may require TLS and AUTH (`Relay`): `starttls` refuses to go on in plaintext when
the server does not offer STARTTLS, `tls` speaks TLS from the first byte (port 465), and
the server's certificate is always verified (against `ca_file`, else the system's trust
store), as Postfix's `smtp_tls_security_level = secure` does. A failed TLS setup is
transient, as in Postfix (the operator fixes the relay or the CA; the message waits). A
5xx to AUTH (535: wrong user or password) refuses the message for every recipient for
good, with the server's words, so it shows in `status` and is never retried forever.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.parser import HeaderParser
from email.utils import getaddresses
from types import TracebackType
from typing import Any

from reconciler.support.deadline import SocketDeadline


@dataclass(frozen=True)
class Reply:
    """What the server said about one recipient (code 0: it said nothing)."""

    code: int
    text: str
    permanent: bool = False

    @property
    def accepted(self) -> bool:
        return 200 <= self.code < 300

    def describe(self) -> str:
        return f"{self.code} {self.text}".strip() if self.code else self.text


SECURITIES = ("none", "starttls", "tls")
_DEFAULT_PORTS = {"none": 25, "starttls": 587, "tls": 465}


@dataclass(frozen=True)
class Relay:
    """The SMTP server reports go through, and how to talk to it safely."""

    host: str = "127.0.0.1"
    port: int = 25
    security: str = "none"  # none | starttls | tls (implicit TLS)
    user: str | None = None  # AUTH as this user (needs TLS: no password in clear)
    password: str | None = dataclasses.field(default=None, repr=False)
    ca_file: str | None = None  # verify the server against this CA, else the system's

    @classmethod
    def parse(cls, hostport: str, security: str = "none", **options: Any) -> Relay:
        """`HOST[:PORT]`; the port defaults to the security's usual one (25, 587, 465)."""
        host, colon, port = hostport.rpartition(":")
        if not colon:
            host, port = hostport, ""
        return cls(host=host or "127.0.0.1", port=int(port or _DEFAULT_PORTS[security]),
                   security=security, **options)

    @property
    def hostport(self) -> str:
        return f"{self.host}:{self.port}"

    def tls_context(self) -> ssl.SSLContext:
        """Certificate and host name checked: a relay that cannot prove itself gets no mail
        and no password."""
        return ssl.create_default_context(cafile=self.ca_file)


_HEADERS_END = re.compile(rb"\r?\n\r?\n")  # the empty line after a message's headers


@dataclass(frozen=True)
class Envelope:
    """Who the message is from and to (To, Cc and Bcc), read from its headers alone, and
    the bytes to send (no Bcc), made only when it is sent: a message written to the outbox
    directory needs only its recipients, and parsing a whole report with its attachments
    costs ten times as much as its headers. The headers are read as raw text (the
    `compat32` policy), not into the modern policy's header objects: only the addresses are
    wanted, `getaddresses` finds them in the raw value (an encoded display name stays
    encoded), and the header objects cost four fifths of the mailer's CPU a message."""

    sender: str
    recipients: tuple[str, ...]
    message: bytes  # as queued
    international: bool  # a non-ASCII address: the server must offer SMTPUTF8

    @classmethod
    def of(cls, message: bytes) -> Envelope:
        # the header block only (up to the first empty line), as UTF-8 (a non-ASCII
        # address is sent as SMTPUTF8); a byte that is not UTF-8 stays escaped
        end = _HEADERS_END.search(message)
        msg = HeaderParser(policy=policy.compat32).parsestr(
            message[:end.end() if end else len(message)].decode("utf-8", "surrogateescape"))
        header = msg.get_all("Sender") or msg.get_all("From") or []
        senders = [a for _, a in getaddresses([str(v) for v in header]) if a]
        recipients: list[str] = []
        for field in ("To", "Cc", "Bcc"):
            for _, address in getaddresses([str(v) for v in msg.get_all(field) or []]):
                if address and address not in recipients:
                    recipients.append(address)
        sender = senders[0] if senders else ""
        international = any(not a.isascii() for a in [sender, *recipients])
        return cls(sender, tuple(recipients), message, international)

    @property
    def data(self) -> bytes:
        """The message as sent: parsed whole, without its Bcc header."""
        visible = message_from_bytes(self.message, policy=policy.SMTP)
        assert isinstance(visible, EmailMessage)
        del visible["Bcc"]
        return visible.as_bytes(policy=policy.SMTPUTF8 if self.international else policy.SMTP)


class _DeadlineSMTP(smtplib.SMTP):
    """smtplib's client, its socket watched by the deadline from before the greeting (and
    before a TLS handshake: the TLS socket is attached before it shakes hands)."""

    def __init__(self, deadline: SocketDeadline, implicit_tls: ssl.SSLContext | None) -> None:
        self._deadline = deadline
        self._implicit_tls = implicit_tls
        self._server_name = ""  # the host connected to: the name its certificate must bear
        super().__init__(timeout=max(deadline.remaining(), 0.001))

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        self._deadline.attach(sock)
        self._server_name = host
        if self._implicit_tls is not None:
            sock = self._handshake(self._implicit_tls, sock, host)
        return sock

    def _handshake(self, context: ssl.SSLContext, sock: socket.socket,
                   host: str) -> ssl.SSLSocket:
        tls = context.wrap_socket(sock, server_hostname=host, do_handshake_on_connect=False)
        self._deadline.attach(tls)
        tls.do_handshake()
        return tls

    def starttls_under_deadline(self, context: ssl.SSLContext) -> tuple[int, bytes]:
        """STARTTLS as smtplib does it, with the handshake under the deadline; the session
        then starts afresh (RFC 3207: forget what the server said before)."""
        code, raw = self.docmd("STARTTLS")
        if code == 220:
            assert self.sock is not None
            self.sock = self._handshake(context, self.sock, self._server_name)
            self.file = None
            self.helo_resp = self.ehlo_resp = None
            self.esmtp_features = {}
            self.does_esmtp = False
            self.ehlo()
        return code, raw


def _text(raw: Any) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    return " ".join(text.split())


def _refusal(code: int, raw: Any) -> Reply:
    return Reply(code, _text(raw), permanent=500 <= code < 600)


class SmtpClient:
    """`with SmtpClient(...) as client: replies = client.send(...)`; QUIT on leaving, so the
    caller records the replies before the server hears the end of the session."""

    def __init__(self, relay: Relay | str, timeout: float) -> None:
        self.relay = Relay.parse(relay) if isinstance(relay, str) else relay
        self.host, self.port = self.relay.host, self.relay.port
        self.timeout = timeout
        self._deadline: SocketDeadline | None = None
        self._smtp: _DeadlineSMTP | None = None

    def __enter__(self) -> SmtpClient:
        self._deadline = SocketDeadline(self.timeout)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._smtp is not None:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                self._smtp.quit()
            self._smtp.close()
        if self._deadline is not None:
            self._deadline.cancel()

    def _failure(self, exc: BaseException) -> Reply:
        assert self._deadline is not None
        if self._deadline.expired or isinstance(exc, TimeoutError):
            return Reply(0, f"no answer within {self.timeout:g} s from {self.host}:{self.port}")
        if isinstance(exc, smtplib.SMTPAuthenticationError):  # 535: wrong user or password
            # Deferred, not bounced, as Postfix's smtp_sasl_auth_soft_bounce: a mistyped or
            # rotated password is the operator's to fix, and the reports queued meanwhile
            # go out once it is (or expire, visibly, after --smtp-max-age).
            return Reply(exc.smtp_code, f"{_text(exc.smtp_error)} (AUTH as {self.relay.user}"
                         f" at {self.host}:{self.port}: check --smtp-user and the password)")
        if isinstance(exc, smtplib.SMTPResponseException):  # greeting or EHLO not 2xx
            return Reply(exc.smtp_code, _text(exc.smtp_error))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return Reply(0, f"TLS: the server's certificate is not trusted:"
                            f" {exc.verify_message} ({self.host}:{self.port}; --smtp-ca-file)")
        if isinstance(exc, ssl.SSLError):
            return Reply(0, f"TLS: {exc.reason or exc} ({self.host}:{self.port})")
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Reply(0, f"{reason or type(exc).__name__} ({self.host}:{self.port})")

    def send(self, envelope: Envelope, recipients: Sequence[str]) -> dict[str, Reply]:
        """One transaction to `recipients`; a reply for each of them, whatever happens."""
        assert self._deadline is not None, "use SmtpClient as a context manager"
        replies: dict[str, Reply] = {}
        try:
            relay = self.relay
            context = relay.tls_context() if relay.security != "none" else None
            self._smtp = smtp = _DeadlineSMTP(self._deadline,
                                              context if relay.security == "tls" else None)
            smtp.connect(self.host, self.port)
            smtp.ehlo_or_helo_if_needed()
            if relay.security == "starttls":
                assert context is not None
                if not smtp.has_extn("starttls"):
                    return dict.fromkeys(recipients, Reply(0, (
                        f"the server does not offer STARTTLS, which --smtp-security starttls"
                        f" requires; nothing was sent in plaintext ({self.host}:{self.port})")))
                code, raw = smtp.starttls_under_deadline(context)
                if code != 220:  # transient, as Postfix: the relay may offer it again
                    return dict.fromkeys(recipients, Reply(code, f"STARTTLS: {_text(raw)}"))
            if relay.user is not None:
                if not smtp.has_extn("auth"):
                    return dict.fromkeys(recipients, Reply(0, (
                        f"the server does not offer AUTH, which --smtp-user needs"
                        f" ({self.host}:{self.port})")))
                smtp.login(relay.user, relay.password or "")
            options: list[str] = []
            if envelope.international:
                if not smtp.has_extn("smtputf8"):
                    refused = Reply(0, "a non-ASCII address needs SMTPUTF8, which the server"
                                       " does not offer", permanent=True)
                    return dict.fromkeys(recipients, refused)
                options = ["SMTPUTF8", "BODY=8BITMIME"]
            code, raw = smtp.mail(envelope.sender, options)
            if code != 250:
                return dict.fromkeys(recipients, _refusal(code, raw))
            accepted: list[str] = []
            for address in recipients:
                code, raw = smtp.rcpt(address)
                if code in (250, 251):
                    accepted.append(address)
                    continue
                replies[address] = _refusal(code, raw)
                if code == 421:  # the server is closing the session: nobody else is decided
                    return {a: replies.get(a, Reply(code, _text(raw))) for a in recipients}
            if not accepted:
                with contextlib.suppress(OSError, smtplib.SMTPException):
                    smtp.rset()
                return replies
            try:
                final = _refusal(*smtp.data(envelope.data))
            except smtplib.SMTPDataError as exc:  # DATA itself refused (no 354)
                final = _refusal(exc.smtp_code, exc.smtp_error)
            for address in accepted:
                replies[address] = final
            return replies
        except (OSError, smtplib.SMTPException) as exc:
            failure = self._failure(exc)
            return {a: replies.get(a, failure) for a in recipients}
