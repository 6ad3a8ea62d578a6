"""What replaces BatchNorm drift for a LayerNorm network: LogME of the mean-pooled features after every
layer of all-MiniLM-L6-v2, on the text benchmark's datasets and sizes, beside what fine-tuning gained
over extraction there (bench/results/text_compare.json). LayerNorm keeps no statistics of the source
data, so the question becomes: does the pretrained top already give the best features for this task
(LogME peaks at the last layer), or did the encoder's own training objective specialise the top
layers away from it (LogME peaks lower)?

Usage: python bench/text_advise.py [--out bench/results/text_advise.json]  (after bench/text_compare.py)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_data import prepare, subsample  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "graft-text-bench")
    parser.add_argument("--compare", type=Path, default=Path("bench/results/text_compare.json"))
    parser.add_argument("--out", type=Path, default=Path("bench/results/text_advise.json"))
    args = parser.parse_args()
    from graft.core.advisor import advise

    prepare(args.data, seed=0)
    compared = json.loads(args.compare.read_text()) if args.compare.is_file() else []
    accuracy = {(r["dataset"], r["size"], r["method"]): r["accuracy"] for r in compared}
    rows = []
    for dataset in ("sms", "trec", "movie"):
        for size in ("8", "64", "full"):
            folder = args.data / dataset if size == "full" else args.data / f"{dataset}-{size}"
            if size != "full":
                subsample(args.data / dataset, folder, int(size), 0)
            advice = advise(folder, backbone="all-MiniLM-L6-v2")
            logme = advice.evidence["logme"]
            row = {
                "dataset": dataset,
                "size": size,
                "logme": logme,
                "peak": max(logme, key=logme.get),
                "last_minus_peak": round(logme["layer5"] - max(logme.values()), 4),
                "scenario": advice.scenario,
                "plan": advice.plan.to_dict(),
                "seconds": advice.seconds,
                **{
                    f"gain_{mode}": round(
                        accuracy[(dataset, size, f"graft-{mode}")] - accuracy[(dataset, size, "graft-extract")], 4
                    )
                    for mode in ("finetune", "fewshot")
                    if (dataset, size, f"graft-{mode}") in accuracy and (dataset, size, "graft-extract") in accuracy
                },
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
