"""Run Debian's chromium headless on a local HTML file: dump the DOM after the page settled, or take a screenshot.

A report's own self-check (``<pre id="sweeplight-selfcheck">``) is read from the dumped DOM, so no CDP library is
needed. chromium prints harmless dbus/GPU warnings on stderr; they are ignored, the self-check is trusted instead.
A missing chromium fails the test: CI installs it, and a silently skipped browser test proves nothing.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

TIMEOUT_S = 30
VIRTUAL_TIME_MS = 15000

# Any host name resolves to nothing: a page that tried to fetch from the network would find it offline.
_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
          "--disable-dev-shm-usage", "--host-resolver-rules=MAP * ~NOTFOUND")


def chromium_binary() -> str:
    """The chromium executable; fails the calling test with the fix when it is not installed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        pytest.fail("chromium is not installed (neither 'chromium' nor 'chromium-browser' is on PATH); the report "
                    "tests need it: apt-get install chromium")
    return found


def _run(page: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """chromium with a throw-away profile, so parallel runs do not share one."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [chromium_binary(), *_FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
        try:
            return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"chromium did not finish {page} within {TIMEOUT_S} s")


def dump_dom(page: Path) -> str:
    """The DOM after scripts ran and virtual time advanced ``VIRTUAL_TIME_MS`` (timers fire without waiting)."""
    result = _run(page, f"--virtual-time-budget={VIRTUAL_TIME_MS}", "--dump-dom")
    if result.returncode != 0 or "<html" not in result.stdout:
        pytest.fail(f"chromium --dump-dom {page} failed (exit {result.returncode}): {result.stderr[-2000:]}")
    return result.stdout


def pre_json(dom: str, element_id: str) -> dict[str, Any]:
    """The JSON text of ``<pre id=element_id>`` in a dumped DOM."""
    match = re.search(rf'<pre id="{re.escape(element_id)}"[^>]*>(.*?)</pre>', dom, re.DOTALL)
    if match is None or not match.group(1).strip():
        pytest.fail(f"no <pre id={element_id!r}> with content in the dumped DOM: the page's scripts did not run")
    return json.loads(html.unescape(match.group(1)))


def selfcheck(page: Path) -> dict[str, Any]:
    """The report's self-check: ``plotly`` (typeof Plotly), ``errors``, ``figures`` (id -> traces), ``tableRows``."""
    return pre_json(dump_dom(page), "sweeplight-selfcheck")


def screenshot(page: Path, png: Path, size: tuple[int, int] = (1400, 4000)) -> Path:
    """A PNG of the page at ``size`` (width, height) after it settled."""
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    result = _run(page, f"--virtual-time-budget={VIRTUAL_TIME_MS}", f"--screenshot={png.resolve()}",
                  f"--window-size={size[0]},{size[1]}", "--hide-scrollbars")
    if not png.is_file():
        pytest.fail(f"chromium --screenshot {page} wrote no file (exit {result.returncode}): {result.stderr[-2000:]}")
    return png
