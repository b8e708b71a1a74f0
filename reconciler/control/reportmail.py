"""The report email as bytes: written directly when every part of it is plain, else by
the `email` package (its default policy), whose output is the reference.

A report's message is a text body and two JSON attachments under a few headers. Building
it through `EmailMessage` parses every header into the header registry, re-folds it and
walks the MIME tree: 6 ms of the reconciler's CPU per report, a tenth of a pass's at 1,000
batches x 10 items. When each header is short printable ASCII (no folding, no encoded
word, addresses of plain dot-atoms) and the body needs no transfer encoding (7bit or
8bit lines within 78 octets), what the package would write is fixed text, written here at
once. Anything else (a long or non-ASCII subject, a quoted or encoded display name, long
body lines) takes the package's path: `tests/test_report_mail.py` holds the two to the
same bytes, byte for byte, over hostile and non-ASCII inputs.
"""

from __future__ import annotations

import binascii
import random
import re
import sys
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import default as DEFAULT_POLICY
from email.utils import format_datetime, parsedate_to_datetime

MAX_LINE: int = DEFAULT_POLICY.max_line_length or 78  # longer header lines are folded
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_ADDR_SPEC = re.compile(rf"{_DOT_ATOM}@{_DOT_ATOM}")
_PHRASE = re.compile(rf"{_ATEXT}(?: {_ATEXT})*")  # a display name the package leaves as is
_PLAIN_TEXT = re.compile(r"[!-~]+(?: [!-~]+)*")  # printable ASCII words, single spaces
_BOUNDARY_WIDTH = len(repr(sys.maxsize - 1))  # as email.generator makes boundaries
_BOUNDARY_LENGTH = 15 + _BOUNDARY_WIDTH + 2  # its Content-Type line is then 78 long
_FILENAME = re.compile(r"[A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Mailbox:
    """An address and its display name (None: the bare address)."""

    address: str
    name: str | None = None


Header = tuple[str, "str | Mailbox"]


def report_message(headers: list[Header], body: str,
                   attachments: list[tuple[str, bytes]]) -> bytes:
    """The message: `headers` in order, the body as text/plain, each (filename, data)
    attached as application/json; the boundary is random, drawn as the package draws it
    (one `random.randrange`, then `.0`, `.1`... while a part holds it as a line)."""
    parts = plain_parts(headers, body, attachments)
    if parts is None:
        return reference_message(headers, body, attachments)
    top, bodies = parts
    boundary = _boundary(b"\n".join(bodies))
    if len(boundary) > _BOUNDARY_LENGTH:  # its Content-Type line would be folded
        return reference_message(headers, body, attachments, boundary)
    return assemble(top, bodies, boundary)


def reference_message(headers: list[Header], body: str, attachments: list[tuple[str, bytes]],
                      boundary: str | None = None) -> bytes:
    """What `EmailMessage` and its default policy write (the boundary: `boundary`, else
    one the generator draws)."""
    msg = EmailMessage()
    for name, value in headers:
        if isinstance(value, Mailbox):
            msg[name] = (Address(display_name=value.name, addr_spec=value.address)
                         if value.name else value.address)
        else:
            msg[name] = value
    msg.set_content(body)
    for filename, data in attachments:
        msg.add_attachment(data, maintype="application", subtype="json", filename=filename)
    if boundary is not None:
        msg.set_boundary(boundary)
    return bytes(msg)


def plain_parts(headers: list[Header], body: str, attachments: list[tuple[str, bytes]]
                ) -> tuple[bytes, list[bytes]] | None:
    """The top headers and each MIME part (headers and payload) as the package writes
    them, or None when some part is not plain enough to be sure of that."""
    if not attachments:
        return None  # not multipart
    lines: list[str] = []
    for name, value in headers:
        text = _plain_header_value(name, value)
        if text is None or len(name) + 2 + len(text) > MAX_LINE:
            return None
        lines.append(f"{name}: {text}\n")
    content = _plain_body(body)
    if content is None:
        return None
    cte, payload = content
    parts = [b"Content-Type: text/plain; charset=\"utf-8\"\nContent-Transfer-Encoding: "
             + cte.encode() + b"\n\n" + payload]
    for filename, data in attachments:
        disposition = f'Content-Disposition: attachment; filename="{filename}"'
        if not _FILENAME.fullmatch(filename) or len(disposition) > MAX_LINE:
            return None
        parts.append(b"Content-Type: application/json\nContent-Transfer-Encoding: base64\n"
                     + disposition.encode() + b"\nMIME-Version: 1.0\n\n" + _base64(data))
    return "".join(lines).encode() + b"MIME-Version: 1.0\n", parts


def assemble(top: bytes, parts: list[bytes], boundary: str) -> bytes:
    """The multipart/mixed message of `plain_parts`, as the package's generator lays it
    out."""
    dash = b"--" + boundary.encode()
    return (top + b'Content-Type: multipart/mixed; boundary="' + boundary.encode() + b'"\n\n'
            + dash + b"\n" + (b"\n" + dash + b"\n").join(parts) + b"\n" + dash + b"--\n")


def fast_message(headers: list[Header], body: str, attachments: list[tuple[str, bytes]],
                 boundary: str) -> bytes | None:
    """`reference_message(..., boundary)` written directly, or None when not plain (or
    when a part holds the boundary as a line, where the package would draw another)."""
    parts = plain_parts(headers, body, attachments)
    if parts is None or _boundary_in(boundary, b"\n".join(parts[1])):
        return None
    return assemble(parts[0], parts[1], boundary)


def _boundary(text: bytes) -> str:
    """As `email.generator.Generator._make_boundary`."""
    boundary = ("=" * 15) + f"{random.randrange(sys.maxsize):0{_BOUNDARY_WIDTH}d}" + "=="
    candidate, counter = boundary, 0
    while _boundary_in(candidate, text):
        candidate, counter = f"{boundary}.{counter}", counter + 1
    return candidate


def _boundary_in(boundary: str, text: bytes) -> bool:
    """Does a line of `text` read `--boundary` or `--boundary--`? (The generator's
    `^--boundary(--)?$` in MULTILINE mode, without compiling a pattern per message.)"""
    dash = b"--" + boundary.encode()
    at = text.find(dash)
    while at != -1:
        end = at + len(dash)
        if text.startswith(b"--", end):
            end += 2
        line_start = at == 0 or text[at - 1] == 0x0A
        if line_start and (end == len(text) or text[end] == 0x0A):
            return True
        at = text.find(dash, at + 1)
    return False


def _plain_header_value(name: str, value: str | Mailbox) -> str | None:
    """The value as the package would write it, when it leaves it as given; else None."""
    if isinstance(value, Mailbox):
        if not _ADDR_SPEC.fullmatch(value.address) or "=?" in value.address:
            return None
        if not value.name:
            return value.address
        if not _PHRASE.fullmatch(value.name) or "=?" in value.name:
            return None
        return f"{value.name} <{value.address}>"
    if name == "Date":  # parsed, then written with a numeric zone, as DateHeader does
        try:
            return format_datetime(parsedate_to_datetime(value))
        except (TypeError, ValueError):
            return None
    if name in ("To", "Bcc", "Cc"):
        addresses = value.split(", ")
        if not all(_ADDR_SPEC.fullmatch(a) for a in addresses) or "=?" in value:
            return None
        return value
    if name == "Message-ID":
        return value if value.startswith("<") and value.endswith(">") and _ADDR_SPEC.fullmatch(
            value[1:-1]) and "=?" not in value else None
    if not _PLAIN_TEXT.fullmatch(value) or "=?" in value:
        return None
    return value


def _plain_body(body: str) -> tuple[str, bytes] | None:
    """(transfer encoding, payload) as `set_content` chooses them for lines within
    MAX_LINE octets: 7bit for ASCII, 8bit otherwise (the default policy's cte_type);
    None when it would choose quoted-printable or base64."""
    data = body.encode("utf-8", "surrogateescape")
    lines = data.splitlines()
    if max((len(line) for line in lines), default=0) > MAX_LINE:
        return None
    payload = b"\n".join(lines) + b"\n"
    if body.isascii():
        return "7bit", payload
    try:
        body.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: the package's own path
        return None
    return "8bit", payload


def _base64(data: bytes) -> bytes:
    """As the package's `_encode_base64`: lines of MAX_LINE // 4 * 3 input octets."""
    step = MAX_LINE // 4 * 3
    return b"".join(binascii.b2a_base64(data[i:i + step]) for i in range(0, len(data), step))
