"""The GPU path measured (issue 21, item 5): one prepared script for a session that is lent a GPU.

    python bench/gpu.py --data DATA/sign-language-digits [--images 10000] [--device cuda] [--out DIR]

1. The 10k extract benchmark's frozen pass: ``graft train TENK --mode extract`` from an empty cache on
   ``--device``; images/s of the frozen pass (the run's "inputs" phase) against the 2-core CPU rate in
   bench/results/speed_10k_repeats.json (target: >= 20x).
2. The sign-language fine-tune (graft's defaults: last third of the stages, 4 augmented views cached),
   end to end from an empty cache, in bf16 and in fp32 (target: <= 30 s).

The 10k set is resampled from DATA's images (bench/speed.make_10k's recipe, from one dataset so that
only that folder need travel to the GPU machine). Each run is a fresh ``python -m graft`` process; the
wall time includes start-up. Results: OUT/gpu.json (default bench/out). With ``--device cpu`` and a
small ``--images`` it checks itself on any machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent


def resampled(source: Path, target: Path, count: int) -> Path:
    """``count`` JPEGs in 10 class folders resampled from ``source``'s training images (bench/speed.make_10k)."""
    from speed import make_10k

    images = sorted(path for path in (source / "train").rglob("*") if path.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return make_10k(target, count, sources=images)


def train(data: Path, out: Path, cache: Path, *options: str) -> dict:
    """One ``graft train`` run in a fresh process, from the cache folder ``cache``: its summary and wall time."""
    command = [sys.executable, "-m", "graft", "train", str(data), "--out", str(out), "--cache-dir", str(cache)]
    command += ["--json", "--overwrite", *options]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return {"wall_seconds": round(wall, 2), **json.loads(done.stdout)}


def cpu_rate(images: int = 10_000) -> float | None:
    """The 2-core CPU's frozen-pass rate on the 10k set as bench/speed.py measured it: images over the
    run's time before training (the frozen pass, and the scan's few seconds: a rate slightly low)."""
    path = HERE / "results" / "speed_10k_repeats.json"
    if not path.is_file():
        return None
    rows = json.loads(path.read_text()).get("rounds", [])
    rates = [images / row["phase_seconds"]["prepare"] for row in rows if "prepare" in row.get("phase_seconds", {})]
    return sum(rates) / len(rates) if rates else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=HERE.parent.parent / "shared/datasets/sign-language-digits")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--epochs", type=int, default=10, help="of the sign-language fine-tune")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", HERE / "out")))
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="graft-gpu-"))
    tenk = resampled(args.data, scratch / "tenk", args.images)
    results: dict = {"date": str(date.today()), "device_option": args.device, "images": args.images}
    try:
        import torch

        results["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        results["device"] = "unknown"
    extract = train(tenk, scratch / "extract", scratch / "cache-extract", "--mode", "extract", "--device", args.device)
    frozen = extract["phase_seconds"].get("inputs")
    results["extract"] = {
        "wall_seconds": extract["wall_seconds"],
        "frozen_pass_seconds": frozen,
        "frozen_images_per_second": round(args.images / frozen, 1) if frozen else None,
        "runtime": extract["runtime"],
    }
    reference = cpu_rate()
    if reference and frozen:
        results["extract"]["cpu_images_per_second"] = round(reference, 1)
        results["extract"]["times_the_2_core_cpu"] = round(args.images / frozen / reference, 1)
    for precision in ("bf16", "fp32"):
        run = train(
            args.data,
            scratch / f"signs-{precision}",
            scratch / f"cache-signs-{precision}",
            "--mode",
            "finetune",
            "--epochs",
            str(args.epochs),
            "--device",
            args.device,
            "--precision",
            precision,
        )
        keys = ("wall_seconds", "seconds", "phase_seconds", "valid_accuracy", "test_accuracy", "runtime")
        results[f"signs_finetune_{precision}"] = {key: run.get(key) for key in keys}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
