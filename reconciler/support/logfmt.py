"""Log lines people and machines can read: one line per state transition, with its fields
(batch, item, attempt, commit, reason), as text (`event key=value ...`, logfmt style) or
as JSON lines (`--log-format json`). Both go through the credential redaction."""

from __future__ import annotations

import json
import logging
from typing import Any

from reconciler.support.redaction import RedactingFormatter, redact_text
from reconciler.support.timefmt import rfc3339

TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _value(value: object) -> str:
    text = str(value)
    if text == "" or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def transition(logger: logging.Logger, event: str, fields: dict[str, Any]) -> None:
    """One INFO line for one transition; empty fields are left out (and nothing is
    formatted when INFO is not logged: a 10,000-item batch makes 20,000 of them)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    shown = {k: v for k, v in fields.items() if v is not None and v != ""}
    line = " ".join([event, *(f"{k}={_value(v)}" for k, v in shown.items())])
    logger.info("%s", line, extra={"fields": {"event": event, **shown}})


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and a transition's fields."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": rfc3339(record.created, micro=True),
                               "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        doc.update(getattr(record, "fields", {}))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return redact_text(json.dumps(doc, default=str, ensure_ascii=False))


def formatter(kind: str) -> logging.Formatter:
    """`text` (the default) or `json`."""
    if kind == "json":
        return JsonFormatter()
    return RedactingFormatter(TEXT)
