"""aiosmtpd's own log (`mail.log`): its protocol lines are debugging, and client text is escaped.

aiosmtpd writes a dozen INFO lines per message (peer, sender, each recipient,
...), with what the client sent inside them: at INFO they drown the service's
own log and a crafted `MAIL FROM` with CR or ESC in it forges log lines. Its
INFO becomes DEBUG (shown only when debugging), and every line it writes has
its control characters escaped.
"""

from __future__ import annotations

import logging

from services.ingress.core.commands import printable

LIBRARY_LOGGER = "mail.log"


class LibraryLog(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        if not logging.getLogger().isEnabledFor(record.levelno):
            return False
        record.msg = printable(record.getMessage())
        record.args = None
        return True


def install() -> None:
    logger = logging.getLogger(LIBRARY_LOGGER)
    if not any(isinstance(f, LibraryLog) for f in logger.filters):
        logger.addFilter(LibraryLog())
