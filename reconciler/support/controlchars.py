"""Text from depositors' files and from job output, made safe to show on one line.

Names, titles and messages reach a terminal (`batchq status`) and a report email. A control
character in them could clear the screen (`ESC [2J`), overwrite a line (`CR`), start a
forged line of the report (`LF`), or reverse the text around it (bidi overrides, the
"Trojan Source" trick). `escape_controls` replaces each such character with a visible
escape (`\\x1b`, `\\r`, `\\u202e`), so what is shown is one line that says what is there.
Everything else, accents and other scripts included, is left as it is.
"""

from __future__ import annotations

import re

# Bidi embeddings, overrides and isolates (Unicode TR 9) and the invisible direction marks.
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# What may need escaping: C0, DEL, C1, surrogates, line/paragraph separators, bidi controls.
_SUSPECT = re.compile(f"[\x00-\x1f\x7f-\x9f\ud800-\udfff\u2028\u2029{_BIDI}]")


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` with every control, line-breaking and bidi-control character escaped."""
    return _SUSPECT.sub(_escape, text)

