"""Time from `graft studio` starting to a trained 3-class model in the browser (issue 20's <= 2 min target),
as a person would do it: the real command, headless Chromium (Debian's), Lite0 with its ImageNet weights.

    .venv/bin/python bench/studio_time.py [--per-class 20] [--mode extract]

Three classes of sign-language digits (0, 1, 2), ``--per-class`` images each, picked by the page's file
inputs. Results: bench/results/studio_time.json, one entry per mode.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "sign-language-digits" / "train"
RESULTS = ROOT / "bench" / "results" / "studio_time.json"


def main() -> None:
    from playwright.sync_api import sync_playwright

    parser = argparse.ArgumentParser()
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--mode", default="extract")
    args = parser.parse_args()
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    folder = Path(tempfile.mkdtemp()) / "studio"
    began = time.monotonic()
    server = subprocess.Popen([str(ROOT / ".venv/bin/graft"), "studio", str(folder), "--port", str(port)])
    marks = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page()
            while True:
                try:
                    page.goto(f"http://127.0.0.1:{port}/")
                    break
                except Exception:
                    time.sleep(0.2)
            marks["page_open_s"] = time.monotonic() - began
            for name in ("0", "1", "2"):
                page.fill("#class-name", name)
                page.click("#new-class button")
                files = sorted((DATA / name).iterdir())[: args.per_class]
                page.set_input_files(f'.class[data-name="{name}"] input', [str(f) for f in files])
                page.wait_for_selector(f".class[data-name=\"{name}\"] .count:has-text('{args.per_class} examples')")
            marks["examples_added_s"] = time.monotonic() - began
            page.select_option("#mode", args.mode)
            page.click("#train")
            page.wait_for_selector("#accuracy", timeout=600_000)
            marks["trained_s"] = time.monotonic() - began
            accuracy = page.inner_text("#accuracy")
            page.screenshot(path=str(ROOT / "bench" / "results" / "studio_time.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    result = {
        "date": time.strftime("%Y-%m-%d"),
        "command": f"bench/studio_time.py --per-class {args.per_class} --mode {args.mode}",
        **marks,
        "evaluation": accuracy,
    }
    print(json.dumps(result, indent=2))
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results[args.mode] = result
    RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
