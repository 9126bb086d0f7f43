"""What every aiohttp listener (the webhook source, the metrics endpoint) shares: a client's
malformed request is counted and reported, never logged with a traceback.

aiohttp answers a request it cannot parse (a bad header line, a broken chunk) with 400 by itself
and logs the parser's traceback at ERROR through its server logger: one per request, before any
authentication, so anyone could fill the logs. :class:`ServerLog` is the logger handed to
aiohttp instead: those go to ``on_bad_request`` (a counter and a throttled line); anything else
(a bug of ours: a 500) is still logged in full by ``aiohttp.server``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

MALFORMED_REQUEST = "malformed_request"
INCOMPLETE_BODY = "incomplete_body"


class ServerLog(logging.Logger):
    """aiohttp's server logger for one listener (``AppRunner(..., logger=ServerLog(...))``)."""

    def __init__(self, on_bad_request: Callable[[str], None]) -> None:
        super().__init__("aiohttp.server")
        self.parent = logging.getLogger("aiohttp.server")
        self.on_bad_request = on_bad_request

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        if isinstance(exc_info, HttpProcessingError):  # aiohttp answers it with a 4xx
            self.on_bad_request(MALFORMED_REQUEST)
            return
        super().exception(msg, *args, exc_info=exc_info, **kwargs)
