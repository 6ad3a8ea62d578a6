"""One process against two (torchrun, DDP on gloo) on the same machine: accuracy and wall time.

    python bench/distributed.py [--data ../shared/datasets/sign-language-digits] [--epochs 4] [--seeds 0]

Each seed runs ``graft train DATA --mode finetune`` (graft's defaults: the last third of the stages, augmented
views cached) in one process, then the same command with ``--nproc 2``, each from an empty activation cache
(the frozen pass is part of what is shared), and with ``--warm`` again from the cache it left. Results:
bench/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "distributed.json"


def run(data: Path, out: Path, cache: Path, epochs: int, seed: int, processes: int) -> dict:
    command = [sys.executable, "-m", "graft", "train", str(data), "--out", str(out), "--mode", "finetune"]
    command += ["--epochs", str(epochs), "--seed", str(seed), "--cache-dir", str(cache), "--json", "--overwrite"]
    if processes > 1:
        command += ["--nproc", str(processes)]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    summary = json.loads(done.stdout)
    return {
        "processes": processes,
        "wall_seconds": round(wall, 2),
        "valid_accuracy": summary["valid_accuracy"],
        "test_accuracy": summary.get("test_accuracy"),
        "epochs_run": summary["epochs_run"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared/datasets/sign-language-digits")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--warm", action="store_true", help="also a second run of each from the warm cache")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    saved = json.loads(RESULTS.read_text())["rows"] if RESULTS.is_file() else []
    rows = [row for row in saved if row["seed"] not in seeds]  # other seeds' rows are kept
    work = Path(tempfile.mkdtemp(prefix="graft-distributed-"))
    try:
        for seed in seeds:
            for processes in (1, 2):
                cache = work / f"cache-{processes}"
                shutil.rmtree(cache, ignore_errors=True)
                for state in ("cold", "warm") if args.warm else ("cold",):
                    row = run(args.data, work / f"run-{processes}", cache, args.epochs, seed, processes)
                    rows.append({"seed": seed, "cache": state, **row})
                    print(json.dumps(rows[-1]), flush=True)
                    RESULTS.parent.mkdir(parents=True, exist_ok=True)
                    RESULTS.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
