"""The live page in a real browser: Debian's headless Chromium draws a real fleet from the feed.

Chromium runs the page's script and opens the WebSocket with the token from the URL's fragment;
over the DevTools protocol the test polls what the page renders (the agent count, the phase, the
agent rows) until it shows the fleet, and keeps a screenshot.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from websockets.sync.client import connect

from gatewayproc import GatewayProcess
from harness import Fleets, RedisHandle, start_fleet, submit
from localcluster import wait_for
from localcluster.netutil import free_port
from localcluster.podrunner import PodRunnerProcess

pytestmark = pytest.mark.usefixtures("operator")
# The flags that work on this kind of machine (the env notes): no sandbox as root, and none of
# the background connections a closed network refuses.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
]
SHOTS = Path(os.environ.get("NEWFUSE_ARTIFACTS", tempfile.gettempdir()))


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        if os.environ.get("CI"):
            raise AssertionError("chromium is missing: `make deps` installs it")
        pytest.skip("no chromium (make deps installs Debian's)")
    return found


class Browser:
    """Headless Chromium driven over the DevTools protocol: open a page, read what it renders.

    Not `--dump-dom` with a virtual time budget: virtual time does not wait for WebSocket
    messages, so on a loaded machine the DOM was dumped before the feed's snapshot arrived.
    """

    def __init__(self, profile: str) -> None:
        self.port = free_port()
        argv = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                f"--remote-debugging-port={self.port}", "about:blank"]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.ws = wait_for(self._page_socket, 60, what="chromium's DevTools endpoint")
        self._id = 0

    def _page_socket(self) -> Any:
        try:
            pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
        except httpx.HTTPError:
            return None
        found = [p for p in pages if p.get("type") == "page"]
        return connect(found[0]["webSocketDebuggerUrl"], max_size=None) if found else None

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv(timeout=60))
            if reply.get("id") == self._id:
                return dict(reply.get("result", {}))

    def text(self, element: str) -> str:
        script = f"(document.getElementById({element!r}) || {{}}).textContent || ''"
        return str(self.call("Runtime.evaluate", expression=script)["result"].get("value", ""))

    def shows(self, element: str, value: str, timeout: float = 60) -> None:
        wait_for(lambda: value in self.text(element), timeout, what=f"#{element} to show {value}")

    def close(self) -> None:
        self.ws.close()
        self.proc.terminate()
        self.proc.wait(30)


@pytest.fixture
def browser() -> Iterator[Browser]:
    with tempfile.TemporaryDirectory() as profile:
        opened = Browser(profile)
        yield opened
        opened.close()


def test_the_live_page_shows_the_fleet_it_is_fed(
    gateway: GatewayProcess,
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    redis_server: RedisHandle,
    viewer: str,
    browser: Browser,
) -> None:
    ns = fleets.namespace
    start_fleet(fleets, pod_runner, redis_client, "shown", 3, review={"handlers": ["echo"]})
    submit("shown", ns, redis_server.url, "--id", "held-1", "--payload", '"a draft"')
    page = f"{gateway.url}/live/{ns}/shown#token={viewer}"

    browser.call("Page.navigate", url=page)
    browser.shows("conn", "live")
    browser.shows("agent-count", "3")
    assert browser.text("phase") == "Available"
    assert browser.text("pods") == "3 / 3"
    rows = browser.call(
        "Runtime.evaluate", expression="document.querySelectorAll('tr[data-agent]').length"
    )
    assert rows["result"]["value"] == 3
    browser.shows("agents", "s ago")  # each agent shows its heartbeat's age
    browser.shows("reviews", "1")  # the draft waits for a person, and the queue shows it
    browser.shows("review-rows", "held-1.output.0")
    assert '"a draft"' in browser.text("review-rows")
    shot = SHOTS / f"live-page-{ns}.png"
    shot.write_bytes(base64.b64decode(browser.call("Page.captureScreenshot")["data"]))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot of the live page: {shot}")

    browser.call("Page.navigate", url=f"{gateway.url}/live/{ns}/shown")  # no token
    browser.shows("conn", "4401")  # the page says why it shows nothing
    assert browser.text("agent-count") == "0"
