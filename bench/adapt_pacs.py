"""PACS single-source adaptation: photo -> art painting, cartoon and sketch, every method, 3 seeds.

    python bench/adapt_pacs.py                 # runs what bench/results/adapt_pacs.json lacks
    python bench/adapt_pacs.py --table         # the markdown table of BENCHMARKS.md

photo and art_painting are in ../shared/datasets/pacs-photo-art; cartoon and sketch come from the same
copy of PACS (github.com/MachineLearning2020/Homework3-PACS, folder PACS/) unpacked under --extra.
Each (target, seed) runs ``--method auto``, which trains every method as a candidate (same loop, same
cached rows, seeded alike) and records each one's target accuracy for reporting: the per-method rows
of the table are those candidates; the auto row is what auto kept. Target labels are read for this
table only; graft never trains or chooses with them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import graft

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "datasets" / "pacs-photo-art"
RESULTS = HERE / "results" / "adapt_pacs.json"
ALIGNING = ("coral", "dann", "mcc")
ORDER = ["source-only", "adabn", *ALIGNING, *[f"adabn+{m}" for m in ALIGNING], "auto"]


def domain(name: str, extra: Path) -> Path:
    return SHARED / name if (SHARED / name).is_dir() else extra / name


def run_one(target: str, seed: int, method: str, extra: Path, out: Path) -> dict:
    began = time.perf_counter()
    summary = graft.adapt(
        domain("photo", extra), domain(target, extra), out / f"{target}-{method}-{seed}",
        method=method, seed=seed, quiet=True, overwrite=True,
    )  # fmt: skip
    run = Path(summary["run"])
    entry = {
        "target": target,
        "seed": seed,
        "method": method,
        "target_accuracy": summary["target_accuracy"],
        "source_valid_accuracy": summary["valid_accuracy"],
        "proxy_a_distance": summary["proxy_a_distance"],
        "seconds": time.perf_counter() - began,
        "chosen": summary["method"],
    }
    if method == "auto":
        entry["candidates"] = json.loads((run / "adaptation_auto.json").read_text())["candidates"]
    return entry


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--targets", default="art_painting,cartoon,sketch")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--extra", type=Path, default=Path("/tmp/pacs/PACS"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/graft-adapt-bench"))
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else []
    if args.table:
        print(table(results))
        return
    for target in args.targets.split(","):
        for seed in map(int, args.seeds.split(",")):
            done = {(r["target"], r["seed"], r["method"]) for r in results}
            if (target, seed, "auto") not in done:
                results.append(run_one(target, seed, "auto", args.extra, args.out))
            auto = next(r for r in results if (r["target"], r["seed"], r["method"]) == (target, seed, "auto"))
            RESULTS.write_text(json.dumps(results, indent=1))
            print(f"{target} seed {seed}: auto chose {auto['chosen']} ({auto['target_accuracy']:.3f})", flush=True)


def accuracies(results: list[dict], target: str, method: str) -> tuple[list[float], list[float]]:
    """Target accuracies and seconds of ``method``: its own runs, or auto's candidate records."""
    values, seconds = [], []
    for r in results:
        if r["target"] != target:
            continue
        if r["method"] == method:
            values.append(r["target_accuracy"])
            seconds.append(r["seconds"])
        elif r["method"] == "auto":
            values += [c["target_accuracy_reported"] for c in r["candidates"] if c["method"] == method]
    return values, seconds


def table(results: list[dict]) -> str:
    targets = sorted({r["target"] for r in results}, key=["art_painting", "cartoon", "sketch"].index)
    lines = ["| method | " + " | ".join(f"photo -> {t}" for t in targets) + " |", "|---" * (len(targets) + 1) + "|"]
    for method in ORDER:
        cells = []
        for target in targets:
            values, _ = accuracies(results, target, method)
            if not values:
                cells.append("")
                continue
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            cells.append(f"{100 * statistics.mean(values):.1f} +- {100 * spread:.1f} (n={len(values)})")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    autos = [r for r in results if r["method"] == "auto"]
    lines.append("")
    lines.append("auto's choices: " + ", ".join(f"{r['target']}/{r['seed']}: {r['chosen']}" for r in autos))
    lines.append(
        "wall time per auto run (s): "
        + ", ".join(f"{t}: {statistics.mean(r['seconds'] for r in autos if r['target'] == t):.0f}" for t in targets)
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
