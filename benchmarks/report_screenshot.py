"""Check that a report opens in a browser: headless Chromium screenshots report.html to PNG.

The report must show its tables and the plot without any network: Chromium runs with
background networking off in a throwaway profile, and the page has nothing to fetch (the
plot is a data URI). The script fails when Chromium fails, writes no PNG, or writes a blank
one, and prints the PNG's path so that a person can look at it.

    .venv/bin/python benchmarks/report_screenshot.py OUT_DIR/report.html --png /tmp/report.png

Needs Debian's `chromium` package (`apt-get install -y chromium`).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
TIMEOUT_SECONDS = 120


def find_chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    raise SystemExit("no Chromium found: apt-get install -y chromium")


def screenshot(html: Path, png: Path, *, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory(prefix="onnxport-chromium-") as profile:
        command = [
            find_chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png}",
            html.absolute().as_uri(),
        ]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_SECONDS, check=False
        )
    if done.returncode != 0 or not png.is_file():
        tail = "\n".join(done.stderr.strip().splitlines()[-10:])
        raise SystemExit(f"Chromium failed (exit {done.returncode}):\n{tail}")


def distinct_colours(png: Path) -> int:
    """How many colours the screenshot has: a blank or error page has very few."""
    import numpy as np
    from matplotlib.image import imread

    pixels = imread(str(png))[..., :3].reshape(-1, 3)
    return len(np.unique((pixels * 255).astype(np.uint8), axis=0))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html", type=Path, help="a report.html")
    parser.add_argument("--png", type=Path, default=None, help="default: beside the report")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=3000)
    args = parser.parse_args(argv)
    if not args.html.is_file():
        raise SystemExit(f"{args.html} is not a file")
    png = args.png or args.html.with_name(args.html.stem + "-screenshot.png")
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    screenshot(args.html, png, width=args.width, height=args.height)
    colours = distinct_colours(png)
    if colours < 50:
        raise SystemExit(f"{png} looks blank ({colours} colours)")
    print(f"{png} ({png.stat().st_size:,} bytes, {colours} colours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
