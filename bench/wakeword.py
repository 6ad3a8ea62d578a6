"""Wake-word figures for BENCHMARKS.md (issue 19), one command, one machine:

    .venv/bin/python bench/wakeword.py [--quick] [--skip-wakeword]

1. ``graft wakeword "hey graft"`` with its defaults (1,500 positives, 3,000 negatives, a 30-minute training
   stream, a 60-minute held-out negative stream, 200 phrases by held-out voices): recall, false accepts
   per hour, time from nothing; a second phrase (``"okay toaster"``) right after, to time the cache.
2. Transfer vs scratch (the course notes' claim): the same clips, N per class (50 ... 1,500), learnt
   (a) by a head on the frozen pretrained speech embedding, (b) by the log-mel CNN from random weights
   (every stage trained); balanced accuracy on clips by voices neither saw (held-out voices: positives,
   and negatives of held-out sentences, confusables and noise).

Results: bench/results/wakeword.json (and the runs' wakeword_curve.png under bench/out/wakeword).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "out" / "wakeword"
RESULTS = ROOT / "bench" / "results" / "wakeword.json"


def held_out_test_set(settings, held_voices) -> dict[str, list[str]]:
    from graft.audio.phrases import confusable_phrases, sentences
    from graft.audio.wakeword import OTHER, WAKE, Recipe, make_clips, speech_recipes

    rng = np.random.default_rng(99)
    wake = speech_recipes([settings.phrase] * 300, held_voices, 91)
    other = speech_recipes(confusable_phrases(settings.phrase, 150, 92), held_voices, 93)
    other += speech_recipes(sentences(300, 94, settings.phrase, held_out=True), held_voices, 95, (0.0, 1.5))
    other += [Recipe("noise", seed=int(rng.integers(2**31))) for _ in range(150)]
    return {WAKE: make_clips(wake), OTHER: make_clips(other)}


def balanced_accuracy(trained, test: dict[str, list[str]]) -> float:
    recalls = []
    for label, paths in test.items():
        answers = trained.predict(paths)
        recalls.append(float(np.mean([answer.get("label") == label for answer in answers])))
    return float(np.mean(recalls))


def transfer_vs_scratch(sizes: list[int], epochs_scratch: int) -> dict:
    import graft
    from graft.audio.wakeword import (
        WakewordSettings,
        make_clips,
        split_voices,
        training_folder,
        training_recipes,
    )

    settings = WakewordSettings("hey graft")
    training_voices, held_voices = split_voices(settings.hold_out)
    clips = {label: make_clips(items) for label, items in training_recipes(settings, training_voices).items()}
    test = held_out_test_set(settings, held_voices)
    rows = []
    rng = np.random.default_rng(0)
    # one seeded order per class, so each smaller set is part of the larger ones and mixes every kind of clip
    clips = {label: [paths[i] for i in rng.permutation(len(paths))] for label, paths in clips.items()}
    for size in sizes:
        subset = {label: paths[: size * (1 if label == "wake" else 2)] for label, paths in clips.items()}
        data = training_folder(subset)
        row = {"per_class": size, "wake": len(subset["wake"]), "other": len(subset["other"])}
        for name, options in (
            ("pretrained_embedding", dict(mode="extract", head="mlp", epochs=30)),
            (
                "log_mel_cnn_scratch",
                dict(backbone="log-mel-cnn", mode="finetune", unfreeze=3, epochs=epochs_scratch, lr=3e-3),
            ),
        ):
            began = time.perf_counter()
            run = WORK / f"{name}-{size}"
            graft.train(data, run, seed=0, quiet=True, overwrite=True, **options)
            row[name] = {
                "balanced_accuracy": balanced_accuracy(graft.load(run), test),
                "seconds": time.perf_counter() - began,
            }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return {"test": {label: len(paths) for label, paths in test.items()}, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-wakeword", action="store_true")
    parser.add_argument("--skip-scratch", action="store_true")
    args = parser.parse_args()
    from graft.audio.wakeword import WakewordSettings, train_wakeword

    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["date"] = time.strftime("%Y-%m-%d")
    results["command"] = " ".join(["bench/wakeword.py", *sys.argv[1:]])
    if not args.skip_wakeword:
        for phrase in ("hey graft", "okay toaster"):
            settings = WakewordSettings(phrase, **({"eval_minutes": 10, "stream_minutes": 10} if args.quick else {}))
            result = train_wakeword(settings, WORK / phrase.replace(" ", "-"), quiet=True, overwrite=True)
            results.setdefault("wakeword", {})[phrase] = result
            print(phrase, {k: result[k] for k in ("recall", "fa_per_hour", "best_recall_at_1_fa_per_hour")})
            print(result["seconds"], flush=True)
            RESULTS.write_text(json.dumps(results, indent=2))
    if not args.skip_scratch:
        sizes = [50, 200, 1500] if args.quick else [50, 150, 500, 1500]
        results["transfer_vs_scratch"] = transfer_vs_scratch(sizes, 10 if args.quick else 20)
        RESULTS.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
