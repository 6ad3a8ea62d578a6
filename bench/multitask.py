"""Multi-task and multi-domain benchmark (issue 6): single-task vs hard vs soft sharing on UTKFace,
the soft-sharing tie sweep, and one shared multi-domain model vs separate per-domain models.

    MALLOC_MMAP_THRESHOLD_=1000000000 MALLOC_TRIM_THRESHOLD_=100000000000 \\
      flock /tmp/graft-cpu.lock python bench/multitask.py --out /tmp/bench-multitask

Every model uses tf_efficientnet_lite0 at 224 px. The frozen trunk is run once over every image
(activations cached on disk, rows looked up by file) and every variant trains on those cached
activations: "extract" trains heads on pooled features; "finetune" trains the last stage
(head_conv, 1x1 conv 320->1280 + BN) and heads, without augmentation. Results: OUT/results.json
and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import graft

DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
UTK = DATASETS / "utkface" / "images"
DOMAINS = {"signs": str(DATASETS / "sign-language-digits"), "pets": str(DATASETS / "dogs-vs-cats-small"), "faces": f"{UTK}:utkface:gender"}


RESULTS: dict = {}


def save(out: Path) -> None:
    (out / "results.json").write_text(json.dumps(RESULTS, indent=2))


def run(out: Path, name: str, **kwargs) -> dict:
    began = time.perf_counter()
    summary = graft.train_multitask(out=out / "runs" / name, quiet=True, num_workers=2, **kwargs)
    summary["wall_seconds"] = time.perf_counter() - began
    (out / "summaries").mkdir(parents=True, exist_ok=True)
    (out / "summaries" / f"{name}.json").write_text(json.dumps(summary, indent=2))
    test = summary["test"]["tasks"]
    RESULTS[name] = summary
    save(out)
    print(f"{name}: " + ", ".join(f"{k} {v.get('accuracy', v.get('mae')):.4f}" for k, v in test.items())
          + f"; {summary['seconds']:.0f}s; distance {summary['tower_distance']:.4g}", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-multitask"))
    parser.add_argument("--extract-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=8)
    parser.add_argument("--ties", default="0,0.01,0.1,1,10")
    parser.add_argument("--parts", default="warm,utk,tie,domains")
    args = parser.parse_args()
    out = args.out
    cache = out / "cache"
    parts = set(args.parts.split(","))
    out.mkdir(parents=True, exist_ok=True)
    results = RESULTS
    results.update(json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {})
    utk = dict(data=UTK, labels="utkface", cache_dir=cache, seed=0)
    if "warm" in parts:  # one pass of the frozen trunk over every image, timed on its own
        for name, kwargs in (("warm-utk", utk), ("warm-domains", dict(data=None, domains=DOMAINS, cache_dir=cache, seed=0))):
            began = time.perf_counter()
            run(out, name, mode="finetune", unfreeze=1, augment=False, epochs=1, **kwargs)
            results[name] = {"wall_seconds": time.perf_counter() - began}
            save(out)
            shutil.rmtree(out / "runs" / name)
    if "utk" in parts:
        for mode, epochs in (("extract", args.extract_epochs), ("finetune", args.finetune_epochs)):
            extra = dict(mode=mode, epochs=epochs, patience=epochs, augment=False, **({"unfreeze": 1} if mode == "finetune" else {}))
            for task in ("age", "gender", "race"):
                results[f"{mode}-single-{task}"] = run(out, f"{mode}-single-{task}", tasks=task, **utk, **extra)
            results[f"{mode}-hard"] = run(out, f"{mode}-hard", tasks="age,gender,race", sharing="hard", **utk, **extra)
    if "tie" in parts:
        for tie in [float(t) for t in args.ties.split(",")]:
            results[f"finetune-soft-tie{tie:g}"] = run(out, f"finetune-soft-tie{tie:g}", tasks="age,gender,race", sharing="soft", tie=tie, mode="finetune",
                                                        unfreeze=1, epochs=args.finetune_epochs, patience=args.finetune_epochs, augment=False, **utk)
    if "domains" in parts:
        for mode, epochs in (("extract", args.extract_epochs), ("finetune", args.finetune_epochs)):
            extra = dict(mode=mode, epochs=epochs, patience=epochs, augment=False, cache_dir=cache, seed=0, **({"unfreeze": 1} if mode == "finetune" else {}))
            results[f"domains-{mode}-shared"] = run(out, f"domains-{mode}-shared", data=None, domains=DOMAINS, **extra)
            for name, spec in DOMAINS.items():
                if ":" in spec:
                    path, labels, task = spec.split(":")
                    results[f"domains-{mode}-separate-{name}"] = run(out, f"domains-{mode}-separate-{name}", data=path, labels=labels, tasks=task, **extra)
                else:  # a class-folder dataset: a one-domain model through the same code path
                    results[f"domains-{mode}-separate-{name}"] = run(out, f"domains-{mode}-separate-{name}", data=None, domains={name: spec}, **extra)
    save(out)


if __name__ == "__main__":
    main()
