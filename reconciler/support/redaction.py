"""Credentials never leave the request that needs them.

Merritt manifests put HTTP Basic credentials in a payload's URL, and a Git remote may carry
a token the same way. Everything shown to a person or kept for later (status, pages,
emails, logs, the store) goes through `redact_url` / `redact_text` first.

The userinfo is everything between `scheme://` and the LAST `@` before the path: a
password with an unescaped `@` in it (`u:p@ss@host`) is hidden whole, never half.
"""

from __future__ import annotations

import logging
import re

HIDDEN = "***"

# scheme://userinfo@ inside free text (an error message, a log line): the authority runs
# to the first `/`, `?`, `#` or space, and the userinfo to its last `@`; or, when what
# follows `user:` is no port, a password holding `/`, `?` or `#` runs to the last `@`
_USERINFO_IN_TEXT = re.compile(
    r"(?i)\b([a-z][a-z0-9+.-]*://)"
    r"(?:[^/?#\s]*@|[^/?#\s@:]*:(?![0-9]*(?:[/?#\s]|$))[^\s@]*@)")


def redact_url(url: str) -> str:
    """The URL with its userinfo replaced by ***, or unchanged when it has none."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """Every `scheme://userinfo@` inside free text (an error message, a log line) hidden."""
    return _USERINFO_IN_TEXT.sub(lambda m: f"{m.group(1)}{HIDDEN}@", text)


class RedactingFormatter(logging.Formatter):
    """A log formatter whose every line, tracebacks included, has userinfo hidden."""

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))
