"""A headless Chromium driven over the DevTools protocol (CDP), with its network cut: opens a
page, records every request it makes, console error and uncaught exception, and takes
screenshots at a given width.

Chromium resolves no host (``--host-resolver-rules``) and sends everything else to a closed
proxy port, so nothing leaves the machine even if a page tries; the recorded requests tell the
test that it tried. The protocol is spoken with ``websockets`` (CDP's transport: one JSON
message per frame, ``id``'d commands and their replies, and events).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from tests.waiting import UNIT, until_sync

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page:
    """One tab. ``requests``: URLs it requested; ``errors``: console errors, exceptions and
    error log entries."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read(), name="cdp.read")

    async def _read(self) -> None:
        async for raw in self.ws:
            message = json.loads(raw)
            if "id" in message:
                future = self.replies.pop(message["id"], None)
                if future is not None and not future.done():
                    future.set_result(message)
                continue
            method, params = message.get("method"), message.get("params", {})
            if method == "Network.requestWillBeSent":
                self.requests.append(params["request"]["url"])
            elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                self.errors.append(f"console: {params.get('args')}")
            elif method == "Runtime.exceptionThrown":
                self.errors.append(f"exception: {params.get('exceptionDetails')}")
            elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
                self.errors.append(f"log: {params['entry'].get('text')}")
            elif method == "Page.loadEventFired":
                self.loaded.set()

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        n = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.replies[n] = future
        await self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        async with asyncio.timeout(30 * UNIT):
            reply = await future
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    async def open(self, url: str, width: int, height: int = 900) -> None:
        await self.resize(width, height)
        self.loaded.clear()
        await self.send("Page.navigate", url=url)
        async with asyncio.timeout(30 * UNIT):
            await self.loaded.wait()

    async def resize(self, width: int, height: int) -> None:
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=width < 600,
        )

    async def evaluate(self, expression: str) -> Any:
        reply = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return reply["result"].get("value")

    async def screenshot(self, path: Path, width: int, full: bool = True) -> None:
        """The page at ``width``, its whole height if ``full``."""
        if full:
            height = int(await self.evaluate("document.documentElement.scrollHeight"))
            await self.resize(width, height)
        shot = await self.send("Page.captureScreenshot", format="png")
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))


FLAGS = (
    "--headless",
    "--no-sandbox",  # tests may run as root in containers
    "--disable-gpu",
    "--hide-scrollbars",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


def _launch(profile: str) -> tuple[subprocess.Popen[bytes], str]:
    """Start Chromium; it and the DevTools URL of its page."""
    assert CHROMIUM, "chromium is not installed (scripts/setup --dev installs it)"
    process = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        active = Path(profile) / "DevToolsActivePort"
        until_sync(lambda: active.exists() and active.read_text().count("\n") >= 1, 30)
        port = int(active.read_text().splitlines()[0])
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/json/list", timeout=10 * UNIT
        ) as reply:
            targets = json.load(reply)
    except BaseException:
        _stop(process)
        raise
    return process, next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10 * UNIT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.asynccontextmanager
async def offline_page() -> AsyncIterator[Page]:
    """A page of a headless Chromium that cannot reach any network."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        process, ws_url = await asyncio.to_thread(_launch, profile)
        try:
            async with connect(ws_url, max_size=None, proxy=None) as ws:
                page = Page(ws)
                try:
                    for domain in ("Page", "Network", "Runtime", "Log"):
                        await page.send(f"{domain}.enable")
                    yield page
                finally:
                    page.reader.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await page.reader
        finally:
            await asyncio.to_thread(_stop, process)
