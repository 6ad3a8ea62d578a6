"""One process against two (torchrun, DDP on gloo) on the same machine: accuracy and wall time.

    python bench/distributed.py [--data ../shared/datasets/sign-language-digits] [--epochs 4] [--seeds 0]
    python bench/distributed.py --adapt [--methods adabn+mcc,mcc,dann] [--seeds 0,1,2]

Each seed runs ``graft train DATA --mode finetune`` (graft's defaults: the last third of the stages, augmented
views cached) in one process, then the same command with ``--nproc 2``, each from an empty activation cache
(the frozen pass is part of what is shared), and with ``--warm`` again from the cache it left. Results:
bench/results/distributed.json.

``--adapt`` runs ``graft adapt photo art_painting --method M`` (PACS, ../shared/datasets/pacs-photo-art; graft's
defaults otherwise) per method and seed in one process and in two, all from one activation cache (the first
run fills it): target accuracy and wall. Results: bench/results/distributed_adapt.json.
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
ADAPT_RESULTS = HERE / "results" / "distributed_adapt.json"
PACS = HERE.parents[1] / "shared/datasets/pacs-photo-art"


def timed(arguments: list[str]) -> tuple[dict, float]:
    """``graft ARGUMENTS --json``'s summary and its wall time in seconds."""
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "graft", *arguments, "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    return json.loads(done.stdout), round(wall, 2)


def run(data: Path, out: Path, cache: Path, epochs: int, seed: int, processes: int) -> dict:
    command = ["train", str(data), "--out", str(out), "--mode", "finetune", "--epochs", str(epochs)]
    command += ["--seed", str(seed), "--cache-dir", str(cache), "--overwrite", "--nproc", str(processes)]
    summary, wall = timed(command)
    return {
        "processes": processes,
        "wall_seconds": wall,
        "valid_accuracy": summary["valid_accuracy"],
        "test_accuracy": summary.get("test_accuracy"),
        "epochs_run": summary["epochs_run"],
    }


def adapt(out: Path, cache: Path, method: str, seed: int, processes: int) -> dict:
    command = ["adapt", str(PACS / "photo"), str(PACS / "art_painting"), "--out", str(out), "--method", method]
    command += ["--seed", str(seed), "--cache-dir", str(cache), "--overwrite", "--nproc", str(processes)]
    summary, wall = timed(command)
    return {
        "method": method,
        "seed": seed,
        "processes": processes,
        "wall_seconds": wall,
        "source_valid_accuracy": summary["valid_accuracy"],
        "target_accuracy": summary["target_accuracy"],
        "target_im": summary["target_im"],
    }


def main_adapt(methods: list[str], seeds: list[int]) -> None:
    work = Path(tempfile.mkdtemp(prefix="graft-distributed-adapt-"))
    rows = []
    try:
        for method in methods:
            for seed in seeds:
                for processes in (1, 2):
                    rows.append(adapt(work / f"run-{processes}", work / "cache", method, seed, processes))
                    print(json.dumps(rows[-1]), flush=True)
                    ADAPT_RESULTS.parent.mkdir(parents=True, exist_ok=True)
                    ADAPT_RESULTS.write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parents[1] / "shared/datasets/sign-language-digits")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--warm", action="store_true", help="also a second run of each from the warm cache")
    parser.add_argument("--adapt", action="store_true", help="graft adapt on PACS photo -> art_painting instead")
    parser.add_argument("--methods", default="adabn+mcc,mcc,dann", help="with --adapt: the methods compared")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    if args.adapt:
        main_adapt(args.methods.split(","), seeds)
        return
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
