"""Reproduce the textbook's two transfer-learning projects with graft on this CPU.

    python bench/book_projects.py [--only dogs|signs] [--out bench/out]

1. dogs-vs-cats-small, feature extractor (book: VGG16 frozen + small head, 95.79% test accuracy).
2. sign-language digits, fine-tuning (book: VGG16, last 5 layers trained, 98.0% test accuracy).
Each run goes through the real ``graft`` command (so the allocator set-up is the user's), and the
results are written to ``bench/out/book_projects.json`` and summarised for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

PROJECTS = {
    "dogs": {
        "title": "dogs-vs-cats-small, --mode extract",
        "data": DATASETS / "dogs-vs-cats-small",
        "args": ["--mode", "extract", "--epochs", "10"],
        "book": "VGG16 feature extractor: 95.79% test",
        "target": {"test_accuracy": 0.96},
    },
    "signs": {
        "title": "sign-language-digits, --mode finetune",
        "data": DATASETS / "sign-language-digits",
        "args": ["--mode", "finetune", "--epochs", "10"],
        "book": "VGG16, last 5 layers fine-tuned: 98.0% test",
        "target": {"test_accuracy": 0.98, "valid_accuracy": 0.97},
    },
}


def run_project(key: str, out: Path, extra: list[str]) -> dict:
    project = PROJECTS[key]
    run = out / key
    command = [
        sys.executable,
        "-m",
        "graft",
        "train",
        str(project["data"]),
        "--out",
        str(run),
        "--json",
        *project["args"],
        *extra,
    ]
    began = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - began
    if completed.returncode != 0:
        raise SystemExit(f"{key} failed:\n{completed.stderr[-3000:]}")
    summary = json.loads(completed.stdout)
    history = json.loads((run / "history.json").read_text())
    config = json.loads((run / "config.json").read_text())
    counts = config["data"]["counts"]
    images_seen = (
        sum(counts.get(s, 0) for s in ("train", "valid")) * len(history)
        + counts.get("test", 0)
        + counts.get("valid", 0)
    )
    return {
        "project": project["title"],
        "command": "graft train " + " ".join(str(c) for c in command[4:] if c != "--json"),
        "book": project["book"],
        "target": project["target"],
        "test_accuracy": summary["test_accuracy"],
        "valid_accuracy": summary["valid_accuracy"],
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "wall_seconds": wall,
        "train_seconds": summary["seconds"],
        "epoch_seconds": [round(r["seconds"], 1) for r in history],
        "images_per_second": images_seen / summary["seconds"],
        "counts": counts,
        "met_target": all(summary[k] is not None and summary[k] >= v for k, v in project["target"].items()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(PROJECTS))
    parser.add_argument("--out", type=Path, default=Path("bench/out"))
    parser.add_argument("extra", nargs="*", help="extra graft train options, after --")
    args = parser.parse_args()
    results = {
        "date": date.today().isoformat(),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        "runs": [run_project(key, args.out, args.extra) for key in ([args.only] if args.only else PROJECTS)],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "book_projects.json").write_text(json.dumps(results, indent=2))
    for row in results["runs"]:
        print(
            f"{row['project']}: test {row['test_accuracy']:.4f} valid {row['valid_accuracy']:.4f} "
            f"wall {row['wall_seconds']:.0f}s epochs {row['epochs_run']} {row['images_per_second']:.0f} img/s "
            f"target {'met' if row['met_target'] else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
