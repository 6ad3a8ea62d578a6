"""Benchmark of ``graft advise`` / ``graft train --mode auto`` against fixed transfer plans (issue 4).

One command: ``python bench/advise.py [--quick] [--only NAME,...]``. It

1. builds class-folder views (symlinks under /tmp/graft-advise-bench) of every dataset in
   ../shared/datasets: UTKFace as gender classification (labels from the file names; malformed names
   and byte-identical copies with conflicting labels are skipped and reported; identical images stay
   on one side of the split), plus seeded small versions with 10 and 50 training images per class;
2. runs ``graft advise --json`` on each (similarity, scenario, plan, seconds);
3. trains ``--mode auto`` and the fixed plans (extract; fine-tune the last third, the last half,
   everything) with the same epoch budget, and records test accuracy and seconds.

Everything runs through the ``graft`` CLI in a subprocess (so the allocator settings apply) under
``flock /tmp/graft-cpu.lock``. Results go to bench/out/advise.json (appended per run, resumable).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path("/work/shared/datasets")
VIEWS = Path("/tmp/graft-advise-bench")
OUT = ROOT / "bench" / "out"
SEED = 0


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        target.symlink_to(source)


def _split_folder_items(root: Path) -> dict[str, dict[str, list[Path]]]:
    return {
        split: {
            c.name: sorted(p for p in c.iterdir() if p.is_file())
            for c in sorted((root / split).iterdir())
            if c.is_dir()
        }
        for split in ("train", "valid", "test")
        if (root / split).is_dir()
    }


def utkface_gender(max_train_per_class: int, max_valid_per_class: int, max_test_per_class: int) -> tuple[dict, dict]:
    """UTKFace as gender (0 male / 1 female); returns the split dict and a report of skipped names."""
    by_hash: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    malformed = []
    for path in sorted((DATASETS / "utkface" / "images").iterdir()):
        fields = path.name.split("_")
        if len(fields) < 4 or fields[1] not in ("0", "1") or not fields[0].isdigit():
            malformed.append(path.name)
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        by_hash[digest].append((path, "male" if fields[1] == "0" else "female"))
    conflicting, groups = [], []
    for _digest, members in sorted(by_hash.items()):
        if len({label for _, label in members}) > 1:
            conflicting.extend(p.name for p, _ in members)
            continue
        groups.append(members[0])  # one copy of identical images: no duplicate can straddle the split
    rng = random.Random(SEED)
    rng.shuffle(groups)
    per_class: dict[str, list[Path]] = defaultdict(list)
    for path, label in groups:
        per_class[label].append(path)
    splits: dict[str, dict[str, list[Path]]] = {"train": {}, "valid": {}, "test": {}}
    for label, paths in sorted(per_class.items()):
        splits["test"][label] = paths[:max_test_per_class]
        splits["valid"][label] = paths[max_test_per_class : max_test_per_class + max_valid_per_class]
        splits["train"][label] = paths[max_test_per_class + max_valid_per_class :][:max_train_per_class]
    report = {
        "malformed_names": malformed,
        "identical_with_conflicting_labels": conflicting,
        "duplicates_dropped": sum(len(m) - 1 for m in by_hash.values() if len({label for _, label in m}) == 1),
    }
    return splits, report


def small_version(splits: dict, per_class: int, seed: int = 0) -> dict:
    """``per_class`` training and ``max(3, per_class // 2)`` validation images per class, drawn with ``seed``
    (seed 0: the draw of the first runs); test unchanged."""
    rng = random.Random(SEED + per_class + 1000 * seed)
    valid_count = max(3, per_class // 2)
    return {
        "train": {c: sorted(rng.sample(paths, min(per_class, len(paths)))) for c, paths in splits["train"].items()},
        "valid": {c: sorted(rng.sample(paths, min(valid_count, len(paths)))) for c, paths in splits["valid"].items()},
        "test": splits["test"],
    }


def cap_test(splits: dict, per_class: int) -> dict:
    rng = random.Random(SEED + 1)
    return {**splits, "test": {c: sorted(rng.sample(p, min(per_class, len(p)))) for c, p in splits["test"].items()}}


def write_view(name: str, splits: dict) -> Path:
    root = VIEWS / name
    if root.exists():
        return root
    for split, classes in splits.items():
        for label, paths in classes.items():
            for path in paths:
                _link(path, root / split / label / path.name)
    return root


def pacs_art(test_per_class: int) -> dict:
    """PACS art paintings (7 classes): ``test_per_class`` test and 25 validation images per class, seeded; the rest
    train (no split ships with PACS)."""
    rng = random.Random(SEED)
    splits: dict[str, dict[str, list[Path]]] = {"train": {}, "valid": {}, "test": {}}
    for folder in sorted((DATASETS / "pacs-photo-art" / "art_painting").iterdir()):
        paths = sorted(folder.iterdir())
        rng.shuffle(paths)
        splits["test"][folder.name] = sorted(paths[:test_per_class])
        splits["valid"][folder.name] = sorted(paths[test_per_class : test_per_class + 25])
        splits["train"][folder.name] = sorted(paths[test_per_class + 25 :])
    return splits


def build_views(test_per_class: int, seeds: list[int]) -> tuple[dict[str, Path], dict]:
    """Every view by name: the full datasets (per seed too, the same folder), and their small versions drawn per
    seed (``-s<seed>`` after seed 0)."""
    views, notes = {}, {}
    signs = _split_folder_items(DATASETS / "sign-language-digits")
    dogs = cap_test(_split_folder_items(DATASETS / "dogs-vs-cats-small"), test_per_class)
    faces, notes["utkface"] = utkface_gender(
        max_train_per_class=600, max_valid_per_class=100, max_test_per_class=test_per_class
    )
    art = pacs_art(50)
    for name, splits in (("signs", signs), ("dogs-cats", dogs), ("utk-gender", faces), ("pacs-art", art)):
        views[name] = write_view(name, splits)
        for seed in seeds:  # the full dataset again, trained with another seed (the split stays)
            if seed:
                views[f"{name}-s{seed}"] = views[name]
        for k in (10, 50):
            for seed in seeds:
                small = f"{name}-{k}" + (f"-s{seed}" if seed else "")
                views[small] = write_view(small, small_version(splits, k, seed))
    return views, notes


def view_seed(name: str) -> int:
    """The seed a view was drawn with (and its runs train with)."""
    return int(name.rsplit("-s", 1)[1]) if "-s" in name else 0


def base_name(name: str) -> str:
    return name.rsplit("-s", 1)[0] if "-s" in name else name


def graft(*args: str) -> dict:
    command = ["flock", "/tmp/graft-cpu.lock", sys.executable, "-m", "graft", *args, "--json"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    began = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, env=env)
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{completed.stderr[-3000:]}")
    result = json.loads(completed.stdout)
    if isinstance(result, dict):
        result["wall_seconds"] = time.perf_counter() - began
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="comma-separated view names (default: all)")
    parser.add_argument("--plans", default="extract,auto,third,half,all")
    parser.add_argument("--epochs", type=int, default=4, help="epoch budget of every plan (auto included)")
    parser.add_argument(
        "--test-per-class", type=int, default=100, help="cap on test images per class (dogs-cats, UTKFace)"
    )
    parser.add_argument(
        "--seeds", default="0", help="comma-separated seeds: small versions drawn and runs trained with each"
    )
    parser.add_argument("--results", default="advise.json", help="file under bench/out to append to")
    parser.add_argument("--advise-only", action="store_true")
    parser.add_argument("--report", action="store_true", help="only print the Markdown tables of bench/out/advise.json")
    args = parser.parse_args()
    if args.report:
        results = json.loads((OUT / args.results).read_text())
        print(report_over_seeds(results) if any("-s" in name for name in results["runs"]) else report(results))
        return
    seeds = [int(seed) for seed in args.seeds.split(",")]
    views, notes = build_views(args.test_per_class, seeds)
    OUT.mkdir(parents=True, exist_ok=True)
    results_path = OUT / args.results
    results = json.loads(results_path.read_text()) if results_path.exists() else {"notes": notes, "runs": {}}
    wanted = [n for n in args.only.split(",") if n] or sorted({base_name(n) for n in views})
    names = sorted((n for n in views if base_name(n) in wanted and view_seed(n) in seeds), key=view_seed)
    for name in names:
        data = str(views[name])
        entry = results["runs"].setdefault(name, {})
        if "advice" not in entry:
            entry["advice"] = graft("advise", data, "--seed", str(SEED))
            results_path.write_text(json.dumps(results, indent=2))
        advice = entry["advice"]
        print(
            f"{name}: scenario {advice['scenario']} similarity {advice['similarity']:.3f} plan {advice['plan']} "
            f"({advice['seconds']:.1f}s)",
            flush=True,
        )
        if args.advise_only:
            continue
        stages = len(advice["evidence"]["stages"])
        fixed = {
            "extract": ["--mode", "extract"],
            "third": ["--mode", "finetune", "--unfreeze", str(max(1, round(stages / 3)))],
            "half": ["--mode", "finetune", "--unfreeze", str(math.ceil(stages / 2))],
            "all": ["--mode", "finetune", "--unfreeze", str(stages)],
        }
        for plan in args.plans.split(","):
            key = f"{plan}@{args.epochs}"
            if key in entry:
                continue
            options = ["--mode", "auto"] if plan == "auto" else fixed[plan]
            summary = graft(
                "train",
                data,
                "--out",
                str(OUT / "runs" / name / key),
                *options,
                "--epochs",
                str(args.epochs),
                "--seed",
                str(SEED + view_seed(name)),
            )
            entry[key] = {
                k: summary.get(k)
                for k in ("test_accuracy", "valid_accuracy", "best_epoch", "seconds", "mode", "unfreeze", "advice")
            }
            entry[key]["wall_seconds"] = summary["wall_seconds"]
            results_path.write_text(json.dumps(results, indent=2))
            print(f"  {key}: test {summary['test_accuracy']:.4f} in {summary['seconds']:.0f}s", flush=True)


def report(results: dict) -> str:
    """Advice per dataset, then test accuracy of every plan per epoch budget, auto's gap to the best fixed plan."""
    lines = [
        "| data | images (train+valid) | min/class | similarity | scenario | advised plan | advise s |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, entry in results["runs"].items():
        advice = entry["advice"]
        plan = advice["plan"]
        text = (
            "extract"
            if plan["mode"] == "extract"
            else f"finetune last {plan['unfreeze']}, backbone lr x{plan['backbone_lr_mult']:g}, {plan['head_epochs']} "
            "head epoch(s) first"
        )
        lines.append(
            f"| {name} | {advice['size']['images']} | {advice['size']['min_per_class']} | {advice['similarity']:.3f} "
            f"| {advice['scenario']} | {text} | {advice['seconds']:.1f} |"
        )
    budgets = sorted({int(key.split("@")[1]) for entry in results["runs"].values() for key in entry if "@" in key})
    for epochs in budgets:
        lines += [
            "",
            f"Test accuracy, {epochs} epochs for every plan (training seconds in brackets):",
            "",
            "| data | auto | extract | last third | last half | all | best fixed | auto - best | advising / auto's "
            "run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for name, entry in results["runs"].items():
            runs = {plan: entry.get(f"{plan}@{epochs}") for plan in ("auto", "extract", "third", "half", "all")}
            if not runs["auto"]:
                continue
            cells = [f"{r['test_accuracy'] * 100:.1f}% ({r['seconds']:.0f})" if r else "" for r in runs.values()]
            fixed = {plan: r["test_accuracy"] for plan, r in runs.items() if r and plan != "auto"}
            best = max(fixed.values()) if fixed else None
            gap = f"{(runs['auto']['test_accuracy'] - best) * 100:+.1f}" if best is not None else ""
            # what advising cost the auto run (the probe only: auto reuses the scan and the backbone),
            # else a standalone advise
            share = ((runs["auto"].get("advice") or {}).get("seconds") or entry["advice"]["seconds"]) / runs["auto"][
                "seconds"
            ]
            best_text = (
                f"{best * 100:.1f}% ({', '.join(p for p, a in fixed.items() if a == best)})" if best is not None else ""
            )
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {best_text} | {gap} | {share * 100:.0f}% |")
    return "\n".join(lines)


def _plan_words(plan: dict) -> str:
    if plan["mode"] == "extract":
        return f"extract {plan['lr']:.0e}"
    return f"last {plan['unfreeze']} {plan['lr']:.0e}"


def report_over_seeds(results: dict) -> str:
    """Test accuracy per plan, mean over the seeds (small versions drawn anew per seed), auto's gaps, what the race
    cost and what it chose."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for name, entry in results["runs"].items():
        groups[base_name(name)].append(entry)
    plans = ("auto", "extract", "third", "half", "all")
    budgets = sorted({key.split("@")[1] for entries in groups.values() for e in entries for key in e if "@" in key})
    lines = []
    for epochs in budgets:
        lines += [
            f"Test accuracy, {epochs} epochs for every plan, mean over seeds (min-max; training seconds, mean):",
            "",
            "| data | seeds | test images | auto | extract | last third | last half | all | auto - best fixed | "
            "auto - extract | race s / auto s | auto chose |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, entries in groups.items():
            runs = {p: [e[f"{p}@{epochs}"] for e in entries if f"{p}@{epochs}" in e] for p in plans}
            seeds = len(runs["auto"])
            if not seeds or any(len(runs[p]) not in (0, seeds) for p in plans):
                continue
            mean = {p: sum(r["test_accuracy"] for r in rs) / len(rs) * 100 for p, rs in runs.items() if rs}
            cells = [
                f"{mean[p]:.1f} ({min(r['test_accuracy'] for r in rs) * 100:.0f}-"
                f"{max(r['test_accuracy'] for r in rs) * 100:.0f}; {sum(r['seconds'] for r in rs) / len(rs):.0f}s)"
                if rs
                else ""
                for p, rs in runs.items()
            ]
            best = max(v for p, v in mean.items() if p != "auto")
            race = [((r.get("advice") or {}).get("race_seconds") or 0.0) / r["seconds"] for r in runs["auto"]]
            chose = ", ".join(_plan_words(r["advice"]["plan"]) for r in runs["auto"] if r.get("advice"))
            test_images = sum(1 for path in (VIEWS / name / "test").rglob("*") if path.is_file())
            lines.append(
                f"| {name} | {seeds} | {test_images} | "
                + " | ".join(cells)
                + f" | {mean['auto'] - best:+.1f} | {mean['auto'] - mean['extract']:+.1f} | "
                f"{sum(race) / len(race) * 100:.0f}% | {chose} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
