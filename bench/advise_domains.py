"""Does ``graft advise SOURCE --target TARGET`` tell when adaptation pays? Its distance and verdict beside
what ``graft adapt --method auto`` then gained over source-only, on near and far pairs.

    python bench/advise_domains.py            # runs what bench/results/advise_domains.json lacks
    python bench/advise_domains.py --table    # the markdown table of BENCHMARKS.md

Far pairs: PACS photo -> art painting, cartoon, sketch (cartoon and sketch unpacked under --extra, as in
bench/adapt_pacs.py). Near pairs: one dataset's train split as the source and its test split as the target
(the same domain, so the gain to expect is none). Target labels are read for this table only.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import graft

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adapt_pacs import domain  # noqa: E402

HERE = Path(__file__).resolve().parent
DATASETS = HERE.parents[1] / "shared" / "datasets"
RESULTS = HERE / "results" / "advise_domains.json"


def pairs(extra: Path) -> dict[str, tuple[Path, Path]]:
    return {
        "photo -> art_painting": (domain("photo", extra), domain("art_painting", extra)),
        "photo -> cartoon": (domain("photo", extra), domain("cartoon", extra)),
        "photo -> sketch": (domain("photo", extra), domain("sketch", extra)),
        "dogs-vs-cats train -> test": (DATASETS / "dogs-vs-cats-small/train", DATASETS / "dogs-vs-cats-small/test"),
        "sign digits train -> test": (DATASETS / "sign-language-digits/train", DATASETS / "sign-language-digits/test"),
    }


def adapted(source: Path, target: Path, out: Path) -> dict:
    """source-only's and auto's target accuracy (one seed), from ``graft adapt --method auto``'s candidates."""
    began = time.perf_counter()
    summary = graft.adapt(source, target, out, method="auto", seed=0, quiet=True, overwrite=True)
    candidates = json.loads((Path(summary["run"]) / "adaptation_auto.json").read_text())["candidates"]
    by_name = {entry["method"]: entry for entry in candidates}
    return {
        "source_only": by_name["source-only"]["target_accuracy_reported"],
        "best": max(entry["target_accuracy_reported"] for entry in candidates),
        "auto": summary["target_accuracy"],
        "auto_method": summary["method"],
        "seconds": time.perf_counter() - began,
    }


def table(results: dict) -> str:
    lines = [
        "| pair | distance (last stage) | confidence drop | verdict | advise s | source-only | best method | auto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in results.items():
        advice, gain = row["advice"], row.get("adapt")
        after = "section 8 (3 seeds) | | " if name.startswith("photo") else "not run | | "
        if gain:
            won = (gain["best"] - gain["source_only"]) * 100
            after = (
                f"{gain['source_only'] * 100:.1f} | {gain['best'] * 100:.1f} (+{won:.1f}) "
                f"| {gain['auto'] * 100:.1f} ({gain['auto_method']})"
            )
        drop, seconds = advice["source_only"]["confidence_drop"], advice["seconds"]
        lines.append(
            f"| {name} | {advice['distance']:.2f} | {drop:.2f} | {advice['verdict']} | {seconds:.0f} | {after} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--extra", type=Path, default=Path("/tmp/pacs/PACS"), help="where cartoon/ and sketch/ are")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "advise_domains")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.table:
        print(table(results))
        return
    from graft.adaptation.advice import advise_domains

    for name, (source, target) in pairs(args.extra).items():
        row = results.setdefault(name, {})
        if "advice" not in row:
            row["advice"] = advise_domains(source, target)
        if "adapt" not in row and not name.startswith("photo"):  # the PACS pairs' gains: section 8, 3 seeds
            row["adapt"] = adapted(source, target, args.out / name.replace(" ", "_").replace(">", ""))
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=1) + "\n")
        print(name, row["advice"]["distance"], row["advice"]["verdict"], row.get("adapt"), flush=True)
    print(table(results))


if __name__ == "__main__":
    main()
