"""Credentials never leave the request that needs them.

Merritt manifests put HTTP Basic credentials in a payload's URL, and a Git remote may carry
a token the same way. Everything shown to a person or kept for later (status, pages,
emails, logs, the store) goes through `redact_url` / `redact_text` first.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

HIDDEN = "***"

# scheme://user[:password]@ — the userinfo part of any URL inside free text
_USERINFO_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@]+@")


def redact_url(url: str) -> str:
    """The URL with its userinfo replaced by ***, or unchanged when it has none."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{HIDDEN}@{host}"))


def redact_text(text: str) -> str:
    """Every `scheme://userinfo@` inside free text (an error message, a log line) hidden."""
    return _USERINFO_IN_TEXT.sub(lambda m: f"{m.group(1)}{HIDDEN}@", text)
