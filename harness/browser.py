"""Headless Chromium for the viewer: find it, read a page's DOM after its script ran, take a screenshot.

Chromium's ``--dump-dom`` prints the DOM once the page has loaded, and the viewer renders synchronously
while it loads, so the dump shows what a reader sees; a URL fragment (``#cat=temporal``) sets the viewer's
filters, so a second dump shows a filter's effect without driving the page.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    """``$HARNESS_CHROMIUM``, else the first Chromium-like browser on PATH."""
    explicit = os.environ.get("HARNESS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() or shutil.which(explicit) else None
    return next((found for name in NAMES if (found := shutil.which(name))), None)


def _run(binary: str, url: str, extra: list[str], timeout: float) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="harness-chromium-") as profile:
        cmd = [binary, "--headless", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
               "--disable-extensions", "--disable-background-networking", f"--user-data-dir={profile}", *extra, url]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.insert(1, "--no-sandbox")  # Chromium refuses to start as root with its sandbox (containers, CI)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def page_url(html: Path, fragment: str = "") -> str:
    return Path(html).resolve().as_uri() + (f"#{fragment}" if fragment else "")


def dump_dom(binary: str, html: Path, fragment: str = "", timeout: float = 120) -> str:
    done = _run(binary, page_url(html, fragment), ["--dump-dom"], timeout)
    if done.returncode != 0 or "<html" not in done.stdout:
        raise RuntimeError(f"{binary} --dump-dom failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


def screenshot(binary: str, html: Path, png: Path, fragment: str = "", size: tuple[int, int] = (1440, 1000),
               timeout: float = 120) -> Path:
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    done = _run(binary, page_url(html, fragment),
                [f"--screenshot={png}", f"--window-size={size[0]},{size[1]}", "--hide-scrollbars"], timeout)
    if not png.exists():
        raise RuntimeError(f"{binary} --screenshot wrote nothing ({done.returncode}): {done.stderr[-2000:]}")
    return png
