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
DOMAINS = {
    "signs": str(DATASETS / "sign-language-digits"),
    "pets": str(DATASETS / "dogs-vs-cats-small"),
    "faces": f"{UTK}:utkface:gender",
}


RESULTS: dict = {}


def save(out: Path) -> None:
    (out / "results.json").write_text(json.dumps(RESULTS, indent=2))


def run(out: Path, name: str, **kwargs) -> dict:
    began = time.perf_counter()
    summary = graft.train_multitask(out=out / "runs" / name, quiet=True, **kwargs)
    summary["wall_seconds"] = time.perf_counter() - began
    (out / "summaries").mkdir(parents=True, exist_ok=True)
    (out / "summaries" / f"{name}.json").write_text(json.dumps(summary, indent=2))
    test = summary["test"]["tasks"]
    RESULTS[name] = summary
    save(out)
    print(
        f"{name}: "
        + ", ".join(f"{k} {v.get('accuracy', v.get('mae')):.4f}" for k, v in test.items())
        + f"; {summary['seconds']:.0f}s; distance {summary['tower_distance']:.4g}",
        flush=True,
    )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-multitask"))
    parser.add_argument("--extract-epochs", type=int, default=20)
    parser.add_argument("--finetune-epochs", type=int, default=4)
    parser.add_argument("--ties", default="0,0.01,0.1,1,10")
    parser.add_argument("--tie-limit", type=int, default=1500, help="images (seeded subset) for the tie sweep")
    parser.add_argument(
        "--soft-tie",
        type=float,
        default=-1,
        help="tie of the soft-sharing run in the main comparison (default: the sweep's best valid score)",
    )
    parser.add_argument(
        "--deep-epochs", type=int, default=6, help="epochs of the 'deep' part (last three stages trained)"
    )
    parser.add_argument(
        "--parts", default="warm,utk,tie,domains", help="comma-separated: warm, utk, tie, domains, deep"
    )
    parser.add_argument("--report", action="store_true", help="only print the Markdown tables of OUT/results.json")
    args = parser.parse_args()
    if args.report:
        print(report(json.loads((args.out / "results.json").read_text())))
        return
    out = args.out
    cache = out / "cache"
    parts = set(args.parts.split(","))
    out.mkdir(parents=True, exist_ok=True)
    results = RESULTS
    results.update(json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {})
    utk = dict(data=UTK, labels="utkface", cache_dir=cache, seed=0)
    if "warm" in parts:  # one pass of the frozen trunk over every image, timed on its own
        for name, kwargs in (
            ("warm-utk", utk),
            ("warm-domains", dict(data=None, domains=DOMAINS, cache_dir=cache, seed=0)),
        ):
            began = time.perf_counter()
            run(out, name, mode="finetune", unfreeze=1, augment=False, epochs=1, **kwargs)
            results[name] = {"wall_seconds": time.perf_counter() - began}
            save(out)
            shutil.rmtree(out / "runs" / name)
    if "tie" in parts:  # on a seeded subset: three towers cost three times the compute
        for tie in [float(t) for t in args.ties.split(",")]:
            results[f"tie-{tie:g}"] = run(
                out,
                f"tie-{tie:g}",
                tasks="age,gender,race",
                sharing="soft",
                tie=tie,
                mode="finetune",
                unfreeze=1,
                epochs=args.finetune_epochs,
                patience=args.finetune_epochs,
                augment=False,
                limit=args.tie_limit,
                **utk,
            )
    if args.soft_tie < 0:
        swept = [(v["valid_score"], v["tie"]) for k, v in results.items() if k.startswith("tie-") and v["tie"] > 0]
        args.soft_tie = max(swept)[1] if swept else 0.1
    if "utk" in parts:
        for mode, epochs in (("extract", args.extract_epochs), ("finetune", args.finetune_epochs)):
            extra = dict(
                mode=mode,
                epochs=epochs,
                patience=epochs,
                augment=False,
                **({"unfreeze": 1} if mode == "finetune" else {}),
            )
            for task in ("age", "gender", "race"):
                results[f"{mode}-single-{task}"] = run(out, f"{mode}-single-{task}", tasks=task, **utk, **extra)
            results[f"{mode}-hard"] = run(out, f"{mode}-hard", tasks="age,gender,race", sharing="hard", **utk, **extra)
        results["finetune-soft"] = run(
            out,
            "finetune-soft",
            tasks="age,gender,race",
            sharing="soft",
            tie=args.soft_tie,
            mode="finetune",
            unfreeze=1,
            epochs=args.finetune_epochs,
            patience=args.finetune_epochs,
            augment=False,
            **utk,
        )
    if (
        "deep" in parts
    ):  # where graft stands when more of the trunk trains: hard sharing, the last three stages fine-tuned
        results["deep-hard"] = run(
            out,
            "deep-hard",
            tasks="age,gender,race",
            sharing="hard",
            mode="finetune",
            unfreeze=3,
            epochs=args.deep_epochs,
            patience=args.deep_epochs,
            augment=False,
            **utk,
        )
    if "domains" in parts:
        for mode, epochs in (("extract", args.extract_epochs), ("finetune", args.finetune_epochs)):
            extra = dict(
                mode=mode,
                epochs=epochs,
                patience=epochs,
                augment=False,
                cache_dir=cache,
                seed=0,
                **({"unfreeze": 1} if mode == "finetune" else {}),
            )
            results[f"domains-{mode}-shared"] = run(out, f"domains-{mode}-shared", data=None, domains=DOMAINS, **extra)
            for name, spec in DOMAINS.items():
                if ":" in spec:
                    path, labels, task = spec.split(":")
                    results[f"domains-{mode}-separate-{name}"] = run(
                        out, f"domains-{mode}-separate-{name}", data=path, labels=labels, tasks=task, **extra
                    )
                else:  # a class-folder dataset: a one-domain model through the same code path
                    results[f"domains-{mode}-separate-{name}"] = run(
                        out, f"domains-{mode}-separate-{name}", data=None, domains={name: spec}, **extra
                    )
    save(out)
    print(report(results))


def _cell(summary: dict | None, task: str, key: str, digits: int) -> str:
    if not summary or task not in summary["test"]["tasks"]:
        return ""
    value = summary["test"]["tasks"][task][key]
    return f"{value * 100:.1f}%" if key == "accuracy" else f"{value:.{digits}f}"


def report(results: dict) -> str:
    lines = [
        "| variant | gender acc | race acc | age MAE (years) | params (total / trained) | wall s (training) |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("extract", "finetune"):
        singles = [results.get(f"{mode}-single-{task}") for task in ("age", "gender", "race")]
        if all(singles):
            total = sum(s["params"]["total"] for s in singles), sum(s["params"]["trainable"] for s in singles)
            seconds = sum(s["fit_seconds"] for s in singles)
            lines.append(
                f"| {mode}: 3 single-task models | {_cell(singles[1], 'gender', 'accuracy', 1)} | "
                f"{_cell(singles[2], 'race', 'accuracy', 1)} | "
                f"{_cell(singles[0], 'age', 'mae', 2)} | {total[0]:,} / {total[1]:,} | {seconds:.0f} |"
            )
        for variant in ("hard", "soft"):
            summary = results.get(f"{mode}-{variant}")
            if summary:
                lines.append(
                    f"| {mode}: {variant} "
                    f"sharing{' (tie ' + format(summary['tie'], 'g') + ')' if variant == 'soft' else ''} | "
                    f"{_cell(summary, 'gender', 'accuracy', 1)} | {_cell(summary, 'race', 'accuracy', 1)} | "
                    f"{_cell(summary, 'age', 'mae', 2)} | "
                    f"{summary['params']['total']:,} / {summary['params']['trainable']:,} | "
                    f"{summary['fit_seconds']:.0f} |"
                )
    deep = results.get("deep-hard")
    if deep:
        lines.append(
            f"| finetune, last 3 stages: hard sharing | {_cell(deep, 'gender', 'accuracy', 1)} | "
            f"{_cell(deep, 'race', 'accuracy', 1)} | "
            f"{_cell(deep, 'age', 'mae', 2)} | {deep['params']['total']:,} / {deep['params']['trainable']:,} | "
            f"{deep['fit_seconds']:.0f} |"
        )
    ties = sorted((float(k[4:]), v) for k, v in results.items() if k.startswith("tie-"))
    if ties:
        lines += [
            "",
            "| tie | tower distance (sum of squared differences, 3 pairs) | RMS difference per tied parameter | "
            "gender acc | race acc | age MAE |",
            "|---|---|---|---|---|---|",
        ]
        for tie, summary in ties:
            tied = 412160  # head_conv parameters per tower (1x1 conv 320->1280 + BN)
            lines.append(
                f"| {tie:g} | {summary['tower_distance']:.4g} | {(summary['tower_distance'] / (3 * tied)) ** 0.5:.2e} "
                "| "
                f"{_cell(summary, 'gender', 'accuracy', 1)} | {_cell(summary, 'race', 'accuracy', 1)} | "
                f"{_cell(summary, 'age', 'mae', 2)} |"
            )
    rows = []
    for mode in ("extract", "finetune"):
        shared = results.get(f"domains-{mode}-shared")
        separate = {name: results.get(f"domains-{mode}-separate-{name}") for name in DOMAINS}
        if shared and all(separate.values()):
            task_of = {"signs": "signs", "pets": "pets", "faces": "gender"}
            sep = [_cell(separate[name], task_of[name], "accuracy", 1) for name in DOMAINS]
            rows.append(
                f"| {mode}: one shared model | "
                + " | ".join(_cell(shared, name, "accuracy", 1) for name in DOMAINS)
                + f" | {shared['params']['total']:,} | {shared['fit_seconds']:.0f} |"
            )
            rows.append(
                f"| {mode}: 3 separate models | "
                + " | ".join(sep)
                + f" | {sum(s['params']['total'] for s in separate.values()):,} | "
                f"{sum(s['fit_seconds'] for s in separate.values()):.0f} |"
            )
    if rows:
        lines += [
            "",
            "| multi-domain | signs acc | dogs-vs-cats acc | UTKFace gender acc | total params | wall s (training) |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
