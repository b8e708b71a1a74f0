"""Exactly one email address per address field, as the standard library reads it.

An address from a batch or profile file is pasted into a To, Bcc, From or Reply-To header,
and a header holds a *list* of addresses, groups and display names: `a,b@x` is two
recipients, `undisclosed:x;y@z` a group (the report builder crashed on it, every pass),
and `=?utf-8?q?…?=` an encoded word that a mail client shows decoded as something else.
So a field must be one bare addr-spec that `email.headerregistry` and `email.utils` both
read back as exactly itself, with nothing around it.

A non-ASCII address (RFC 6531) is refused too: many relays do not offer SMTPUTF8, and
a report that could never be delivered must not be written at all.

A display name (`fromName`, `replyToName`) is a separate field, never part of an address:
batchq quotes and encodes it itself, so commas, quotes and angle brackets in it are only
text; what could still forge a header or show a reader something else — line breaks,
control characters, an encoded word written by hand — is refused.
"""

from __future__ import annotations

import re
from email.errors import HeaderParseError
from email.headerregistry import Address
from email.utils import getaddresses
from functools import lru_cache
from typing import Any

EXAMPLE = "name@example.org"


@lru_cache(maxsize=4096)
def address_problem(value: str) -> str | None:
    """Why `value` is not exactly one plain address (a phrase to follow the value), or None.

    Kept per value: a depositor's address recurs in all of their batch files, and parsing
    it with `email.headerregistry` was about a sixth of validating a small batch file."""
    if "\r" in value or "\n" in value:
        return "contains a line break"
    if "=?" in value:
        return f"contains an encoded word (=?...?=); write the address itself ({EXAMPLE})"
    if ":" in value or ";" in value:
        return f"is a group of addresses (name: a, b;); give exactly one address ({EXAMPLE})"
    if "," in value:
        return f"is a list of addresses; give exactly one address ({EXAMPLE})"
    if not value.isascii():  # refused here rather than bounced later by a relay
        return ("has non-ASCII characters, which a mail server without SMTPUTF8 cannot"
                f" deliver; give an ASCII address ({EXAMPLE})")
    if any(c in value for c in '<>()"'):
        return f"has a display name, comment or quotes; give only the address ({EXAMPLE})"
    try:
        parsed = Address(addr_spec=value)
    except (ValueError, IndexError, HeaderParseError):
        return f"is not a valid email address ({EXAMPLE})"
    if parsed.addr_spec != value or not parsed.domain or getaddresses([value]) != [("", value)]:
        return f"is not a valid email address ({EXAMPLE})"
    return None


def display_name_problem(value: str) -> str | None:
    """Why `value` cannot be a display name (a phrase to follow the value), or None."""
    if "\r" in value or "\n" in value:
        return "contains a line break"
    if any(not c.isprintable() for c in value):
        return "contains a control character; give plain text"
    if "=?" in value:
        return "contains an encoded word (=?...?=); write the name itself, in any script"
    if not value.strip():
        return "is blank; give a name or leave the field out"
    return None


# `email: x@y`, block or flow style, quoted or not: how an address is found in a batch file
# that does not parse at all (its depositor still deserves to hear why)
_EMAIL_KEY = re.compile(r"""(?m)(?:^|[{,\s])email\s*:\s*["']?([^\s"',}#]+)""")
_PLAIN = re.compile(r"[^@\s<>]+@[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]"
                    r"([A-Za-z0-9-]*[A-Za-z0-9])?)*")


def readable_address(data: bytes, parsed: Any = None) -> str | None:
    """The depositor's address of a batch file that did not validate, when it can be read:
    `spec.depositor.email` of what parsed, else the first `email:` value in the text; None
    unless it is exactly one plain address."""
    found: object = None
    if isinstance(parsed, dict):
        spec = parsed.get("spec")
        depositor = spec.get("depositor") if isinstance(spec, dict) else None
        found = depositor.get("email") if isinstance(depositor, dict) else None
    if not isinstance(found, str):
        match = _EMAIL_KEY.search(data.decode("utf-8", "replace"))
        found = match.group(1) if match else None
    if isinstance(found, str) and _PLAIN.fullmatch(found) and address_problem(found) is None:
        return found
    return None
