"""A finished ``graft wakeword`` run's recall at <= 0.5, 1, 2 and 3 false accepts an hour, counted on 3 hours of
negatives: its validation hour (seed 50,000 + seed), a second one (55,000 + seed) and its test hour (60,000 + seed).
One hour holds 0 or 1 false accepts at the rates that matter, so the run's own test hour cannot tell them apart.

For each cap: the best recall among thresholds in steps of 0.005 whose false accepts on the 3 hours stay within it
(5-step smoothing, the default). Also recall by held-out voice at <= 1 an hour, and what the run's own rule (the
threshold chosen on the validation hour for 0.5 an hour) gives on the other two hours. The scores of each run are
kept in ``bench/out/wakeword_hours/<run>.npz``, so a second reading is instant.

    .venv/bin/python bench/wakeword_hours.py RUN [RUN ...] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
KEPT = ROOT / "bench" / "out" / "wakeword_hours"
STREAMS = ("val", "val2", "neg")
CAPS = (0.5, 1.0, 2.0, 3.0)
GRID = np.round(np.arange(0.2, 0.999, 0.005), 3)


def scores(run: Path) -> dict[str, np.ndarray]:
    """Times and wake scores of the run's head on the three negative hours and its positive stream."""
    kept = KEPT / f"{run.name}.npz"
    if kept.is_file():
        with np.load(kept) as saved:
            return dict(saved)
    import graft
    from graft.audio import wakeword as ww
    from graft.audio.stream import Detector

    settings = ww.WakewordSettings(**json.loads((run / "wakeword.json").read_text())["settings"])
    detector = Detector.from_run(graft.load(run), wake_label=ww.WAKE)
    training_voices, held = ww.split_voices(settings.hold_out)
    test_voices = held or training_voices
    phrase, seed = settings.phrase, settings.seed
    streams = {
        "val": ww.negative_stream(60, training_voices, phrase, 50_000 + seed),
        "val2": ww.negative_stream(60, training_voices, phrase, 55_000 + seed),
        "neg": ww.negative_stream(settings.eval_minutes, test_voices + training_voices, phrase, 60_000 + seed),
        "pos": ww.positive_stream(settings, test_voices, 70_000 + seed),
    }
    out: dict[str, np.ndarray] = {}
    for name, stream in streams.items():
        out[f"{name}_times"], out[f"{name}_scores"] = detector.scores(stream.samples)
        if name != "pos":
            out[f"{name}_hours"] = np.array(stream.hours)
    out["wake_ends"] = np.asarray(streams["pos"].wake_ends)
    out["wake_voices"] = np.asarray(streams["pos"].wake_voices)
    KEPT.mkdir(parents=True, exist_ok=True)
    np.savez(kept, **out)
    return out


def reading(run: Path) -> dict:
    from types import SimpleNamespace

    from graft.audio import wakeword as ww
    from graft.audio.stream import SMOOTH_STEPS, Detector

    data = scores(run)
    detector = Detector(model=None, wake_index=0, threshold=0.5, smooth=SMOOTH_STEPS)
    voices = [str(v) for v in data.get("wake_voices", [])]
    positives = SimpleNamespace(wake_ends=list(data["wake_ends"]), wake_voices=voices)
    pos = (data["pos_times"], data["pos_scores"])

    def false_accepts(threshold: float, names=STREAMS) -> int:
        return sum(ww.false_accepts(detector, data[f"{n}_times"], data[f"{n}_scores"], threshold) for n in names)

    def recall(threshold: float) -> float:
        return ww.hits(detector, positives, *pos, threshold) / len(positives.wake_ends)

    hours = float(sum(data[f"{n}_hours"] for n in STREAMS))
    counted = {float(t): false_accepts(t) for t in GRID}
    result = {"run": run.name, "negative_hours": hours, "recall_at": {}}
    for cap in CAPS:
        threshold = min(t for t, count in counted.items() if count <= cap * hours)
        result["recall_at"][str(cap)] = {"recall": recall(threshold), "threshold": threshold}
    at_one = result["recall_at"]["1.0"]["threshold"]
    if voices:
        result["recall_by_voice_at_1"] = ww.recall_by_voice(detector, positives, *pos, at_one)
    own = ww.choose_threshold(detector, data["val_times"], data["val_scores"], float(data["val_hours"]), 0.5)
    result["own_rule"] = {
        "threshold": own,
        "recall": recall(own),
        "false_accepts_other_2h": false_accepts(own, STREAMS[1:]),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, help="write the readings here")
    args = parser.parse_args()
    readings = []
    for run in args.runs:
        result = reading(run)
        readings.append(result)
        caps = "  ".join(f"<= {cap}/h {v['recall']:.1%} (t {v['threshold']})" for cap, v in result["recall_at"].items())
        own = result["own_rule"]
        print(f"{run.name} ({result['negative_hours']:.0f} h): {caps}")
        print(
            f"   own rule: t {own['threshold']}, recall {own['recall']:.1%}, {own['false_accepts_other_2h']} FA on 2 h"
        )
    if args.json:
        args.json.write_text(json.dumps(readings, indent=1))


if __name__ == "__main__":
    main()
