"""A headless Chromium (Debian's `chromium`) driven over the DevTools protocol on
a pipe (--remote-debugging-pipe: JSON messages ended by NUL on fds 3 and 4), so
that browser tests need no driver package and no network port.

    with Browser.start() as browser:
        browser.navigate("http://127.0.0.1:8800/")
        browser.wait_for("document.querySelector('#services') !== null")
        png = browser.screenshot()
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from types import TracebackType
from typing import Any

_ON_FDS_3_AND_4 = """
import fcntl, os, sys
high = [fcntl.fcntl(int(fd), fcntl.F_DUPFD, 10) for fd in sys.argv[1:3]]
for target, fd in zip((3, 4), high):
    os.dup2(fd, target)
    os.close(fd)
os.execv(sys.argv[3], sys.argv[3:])
"""


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(Exception):
    pass


class Browser:
    def __init__(self, process: subprocess.Popen[bytes], to_browser: int, from_browser: int,
                 profile: str) -> None:
        self._process = process
        self._out = os.fdopen(to_browser, "wb", buffering=0)
        self._in = os.fdopen(from_browser, "rb", buffering=0)
        self._profile = profile
        self._buffer = b""
        self._next_id = 0
        self.session = ""

    @classmethod
    def start(cls, width: int = 1440, height: int = 900) -> Browser:
        binary = chromium_path()
        if binary is None:
            raise BrowserError("chromium is not installed (deploy/setup.sh installs it)")
        profile = tempfile.mkdtemp(prefix="swarm-chromium-")
        # fds 3 and 4 of the child: what it reads commands from, what it writes to.
        commands_read, commands_write = os.pipe()
        replies_read, replies_write = os.pipe()
        flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-dev-shm-usage", "--remote-debugging-pipe", "--hide-scrollbars",
                 f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank"]
        # A small exec wrapper puts the pipes on fds 3 and 4 of the browser, where it
        # expects them (moved above 10 first: either pipe may itself be fd 3 or 4;
        # a shell cannot do it, dash takes single-digit fds only).
        process = subprocess.Popen(
            [sys.executable, "-c", _ON_FDS_3_AND_4, str(commands_read), str(replies_write),
             binary, *flags],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            pass_fds=(commands_read, replies_write))
        os.close(commands_read)
        os.close(replies_write)
        browser = cls(process, commands_write, replies_read, profile)
        try:
            targets = browser.call("Target.getTargets")["targetInfos"]
            page = next(t for t in targets if t["type"] == "page")
            browser.session = browser.call("Target.attachToTarget", targetId=page["targetId"],
                                           flatten=True)["sessionId"]
            browser.call("Page.enable", session=True)
        except BaseException:
            browser.close()
            raise
        return browser

    def call(self, method: str, *, session: bool = False, timeout: float = 20.0,
             **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        self._out.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise BrowserError("chromium did not answer in time")
            chunk = self._in.read(65536)
            if not chunk:
                raise BrowserError("chromium closed the pipe")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return dict(json.loads(message))

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression,
                           returnByValue=True)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 10.0) -> float:
        """Until the expression is truthy in the page; returns the seconds it took."""
        started = time.monotonic()
        while not self.evaluate(expression):
            if time.monotonic() - started > timeout:
                raise BrowserError(f"not true within {timeout}s: {expression}")
            time.sleep(0.05)
        return time.monotonic() - started

    def screenshot(self) -> bytes:
        data = self.call("Page.captureScreenshot", session=True, format="png",
                         captureBeyondViewport=True)["data"]
        return base64.b64decode(data)

    def close(self) -> None:
        for stream in (self._out, self._in):
            stream.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
