"""Screenshot a report page in headless Chromium (Debian package `chromium`), optionally with a cell
selected as if hovered: python scripts/screenshot_html.py RUN/report/neighbourhoods.html --cell 3 --out shot.png"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path


def screenshot(page: Path, out: Path, cell: int | None = None, size: str = "820,900") -> Path:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not browser:
        sys.exit("error: no headless Chromium found (apt-get install chromium)")
    url = page.resolve().as_uri() + (f"#{cell}" if cell is not None else "")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
           f"--window-size={size}", f"--screenshot={out.resolve()}", url]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    if not out.is_file():
        sys.exit(f"error: Chromium wrote no screenshot for {page}")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("page", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cell", type=int, default=None, help="select this cell, as a hover would")
    ap.add_argument("--size", default="820,900", help="window width,height in pixels")
    a = ap.parse_args()
    print(screenshot(a.page, a.out, a.cell, a.size))
