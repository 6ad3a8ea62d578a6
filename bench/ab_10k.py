"""A/B of the 10,000-image extract run between two checkouts of graft, in the same hour: rounds of
(floor, run A, floor, run B, floor), each run compared with the mean of the floors either side of it.
``python bench/ab_10k.py --a-src /path/to/old/src --rounds 2``: A runs with ``PYTHONPATH=A_SRC``, B is
this checkout. Results: bench/out/ab_10k.json."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--a-src", type=Path, required=True, help="the src/ folder of the other checkout (run A)")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    data = speed.make_10k(Path(tempfile.gettempdir()) / "graft-10k")
    scratch = Path(tempfile.mkdtemp(prefix="graft-ab-"))
    cores = os.cpu_count() or 1
    rows = []
    floor = speed._floor_rate(cores)
    for number in range(args.rounds):
        for label, src in (("A", str(args.a_src)), ("B", None)):
            if src:
                os.environ["PYTHONPATH"] = src
            run = speed.timed_train(data, scratch / f"run-{label}-{number}", scratch / f"cache-{label}-{number}")
            os.environ.pop("PYTHONPATH", None)
            after = speed._floor_rate(cores)
            seconds = 10_000 / ((floor["best"] + after["best"]) / 2)
            rows.append(
                {
                    "round": number + 1,
                    "checkout": label,
                    **run,
                    "one_forward_pass_seconds": seconds,
                    "ratio_wall": run["wall_seconds"] / seconds,
                }
            )
            print({k: rows[-1][k] for k in ("round", "checkout", "wall_seconds", "ratio_wall")}, flush=True)
            floor = after
    speed.OUT.mkdir(parents=True, exist_ok=True)
    (speed.OUT / "ab_10k.json").write_text(
        json.dumps({"date": date.today().isoformat(), "a_src": str(args.a_src), "rounds": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
