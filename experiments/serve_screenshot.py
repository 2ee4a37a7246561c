"""The README's picture of `fastresnet serve`: start the page for a run, upload one image in headless Chromium,
save a screenshot once the result has settled, stop the server.

    python experiments/serve_screenshot.py --model RUN_DIR --image IMG [--out docs/figures/serve_page.png]
"""
from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--image", required=True)
    ap.add_argument("--out", default="docs/figures/serve_page.png")
    a = ap.parse_args()
    from playwright.sync_api import sync_playwright
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    server = subprocess.Popen([sys.executable, "-m", "fastresnet.cli", "serve", "--model", a.model,
                               "--port", str(port)])
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError: time.sleep(0.5)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1100, "height": 780})
            page.goto(url)
            page.set_input_files("#upload input[type=file]", a.image)
            page.wait_for_selector("#seen img", timeout=120_000)
            page.wait_for_timeout(2500)  # Gradio fades new results in
            page.screenshot(path=a.out, full_page=True)
            browser.close()
        print(f"screenshot: {a.out}")
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
