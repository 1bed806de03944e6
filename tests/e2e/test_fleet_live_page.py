"""The live page in a real browser: Debian's headless Chromium draws a real fleet from the feed.

Chromium runs the page's script, opens the WebSocket with the token from the URL's fragment, and
after a few (virtual) seconds prints the DOM it rendered; the test reads the agent count, the
phase and the agent rows off it, and keeps a screenshot.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import redis

from gatewayproc import GatewayProcess
from harness import Fleets, start_fleet
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


def _browse(url: str, *action: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        argv = [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]
        argv += ["--virtual-time-budget=5000", *action, url]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _shown(dom: str, element: str) -> str:
    found = re.search(rf'id="{element}"[^>]*>([^<]*)<', dom)
    assert found is not None, f"#{element} is not on the page"
    return found.group(1)


def test_the_live_page_shows_the_fleet_it_is_fed(
    gateway: GatewayProcess,
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    viewer: str,
) -> None:
    ns = fleets.namespace
    start_fleet(fleets, pod_runner, redis_client, "shown", 3)
    page = f"{gateway.url}/live/{ns}/shown#token={viewer}"

    dom = _browse(page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _shown(dom.stdout, "conn") == "live"
    assert _shown(dom.stdout, "agent-count") == "3"
    assert _shown(dom.stdout, "phase") == "Available"
    assert _shown(dom.stdout, "pods") == "3 / 3"
    assert len(re.findall(r"<tr data-agent=", dom.stdout)) == 3
    assert "s ago" in dom.stdout, "each agent shows its heartbeat's age"

    refused = _browse(f"{gateway.url}/live/{ns}/shown", "--dump-dom")
    assert _shown(refused.stdout, "agent-count") == "0"
    assert "4401" in _shown(refused.stdout, "conn"), "without a token the page says why"

    shot = SHOTS / f"live-page-{ns}.png"
    taken = _browse(page, f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot of the live page: {shot}")
