"""Keep credentials out of messages: URLs lose their user-info, ``password=`` values are masked.

Connection URLs carry secrets (``redis://:password@host``, ``nats://user:password@host``,
``nats://token@host``). Every text kiqstack shows (configuration errors, log lines, error answers)
passes through :func:`redact` first.
"""

from __future__ import annotations

import logging
import re
from typing import TextIO

MASK = "***"

# scheme://<user-info>@  ->  scheme://***@   (user-info: anything up to the first '@' that is not
# a separator of the URL's path, query or of the surrounding text)
_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/?#@\s'\"]+@")
_PASSWORD_PARAM = re.compile(r"(?P<key>[?&;]password=)[^&#\s'\"]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask the credentials of every URL in a text.

    :param text: any message.
    :return: the message with ``scheme://user:password@`` turned into ``scheme://***@`` and
        ``password=...`` query parameters masked.
    """
    if "@" in text:
        text = _USERINFO.sub(rf"\g<scheme>{MASK}@", text)
    if "assword=" in text or "ASSWORD=" in text:
        text = _PASSWORD_PARAM.sub(rf"\g<key>{MASK}", text)
    return text


def redact_url(url: str) -> str:
    """Show a URL without its credentials, even a malformed one (no scheme, several ``@``).

    :param url: a connection URL as configured.
    :return: the URL with everything up to its last ``@`` after the scheme masked.
    """
    if "@" not in url:
        return redact(url)
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    host = rest.rsplit("@", 1)[1]
    return f"{scheme}{sep}{MASK}@{host}"


class RedactingStreamHandler(logging.StreamHandler[TextIO]):
    """A log handler that passes every formatted line (with tracebacks) through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        """Format the record, then mask credentials.

        :param record: the log record.
        :return: the line to write.
        """
        return redact(super().format(record))
