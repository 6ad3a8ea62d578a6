"""Issue 17's figures, one command, one machine (the runs and curves resume where they stopped):

    .venv/bin/python bench/pretrain_data.py /tmp/pretrain-data     # once: the .npz files
    .venv/bin/python bench/pretrain.py /tmp/pretrain-data [--only STEP ...]

Steps:
- ``pretrain``: MNIST (60k) end to end vs greedy layer-wise, the same graft_cnn: test accuracy and time.
- ``digits``: MNIST -> scikit-learn digits, ``graft curve`` at 1, 5, 10, 25 and all per class, 3 repeats:
  scratch, the MNIST run fine-tuned, the MNIST run frozen (extract).
- ``negative``: MNIST -> Animal-MNIST and -> Fashion-MNIST at 10 and 50 per class, 3 repeats.
- ``depth``: ``graft curve --by-depth``, MNIST -> digits at 10 per class.
- ``self-taught``: digits 5-9 of MNIST without labels (denoising autoencoder) -> digits 0-4 with few labels;
  against the same network pre-trained *with* the labels of 5-9, ImageNet features, and scratch.
- ``signs``: the sign-language digits (shared/), 6 sizes x 3 repeats x scratch and imagenet, timed.

Results: bench/results/pretrain.json (and each curve's curve.png copied to bench/results/).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "bench" / "out" / "pretrain"
RESULTS = ROOT / "bench" / "results" / "pretrain.json"
SIGNS = ROOT.parent / "shared" / "datasets" / "sign-language-digits"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def save(results: dict) -> None:
    RESULTS.write_text(json.dumps(results, indent=2))


def pretrained(data: Path, name: str, **options) -> tuple[Path, dict]:
    import graft

    run = WORK / name
    if not (run / "metrics.json").is_file():
        graft.pretrain(data, run, overwrite=True, quiet=True, **options)
    metrics = json.loads((run / "metrics.json").read_text())
    return run, metrics


def curve(target, name: str, **options) -> dict:
    import graft

    began = time.perf_counter()
    result = graft.curve(target, WORK / name, quiet=True, **options)
    shutil.copyfile(WORK / name / "curve.png", ROOT / "bench" / "results" / f"curve-{name}.png")
    keep = {key: result[key] for key in ("table", "summary", "judged_on") if key in result}
    seconds = sum(point["seconds"] for point in result["points"])
    return {
        **keep,
        "verdicts": result.get("verdicts"),
        "point_seconds": seconds,
        "wall_seconds": time.perf_counter() - began,
    }


def digit_subsets(data: Path) -> tuple[Path, Path]:
    """MNIST digits 5-9 (the unlabelled pool, and the labelled source of the comparison) and digits 0-4."""
    low, high = WORK / "mnist-0to4.npz", WORK / "mnist-5to9.npz"
    if not low.is_file():
        with np.load(data / "mnist.npz") as mnist:
            x, y, xt, yt = mnist["x_train"], mnist["y_train"], mnist["x_test"], mnist["y_test"]
        np.savez(low, x_train=x[y < 5], y_train=y[y < 5], x_test=xt[yt < 5], y_test=yt[yt < 5])
        np.savez(high, x_train=x[y >= 5], y_train=y[y >= 5] - 5, x_test=xt[yt >= 5], y_test=yt[yt >= 5] - 5)
    return low, high


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--only", nargs="*")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    results["command"] = " ".join(["bench/pretrain.py", *sys.argv[1:]])
    results["date"] = time.strftime("%Y-%m-%d")

    def wanted(step: str) -> bool:
        return not args.only or step in args.only

    mnist = args.data / "mnist.npz"
    if wanted("pretrain"):
        rows = {}
        for name, options in (
            ("mnist-e2e", {"epochs": 5}),
            ("mnist-greedy", {"epochs": 5, "greedy": True, "greedy_epochs": 1}),
        ):
            _, metrics = pretrained(mnist, name, **options)
            rows[name] = {
                "test_accuracy": metrics["test"]["accuracy"],
                "seconds": metrics["seconds"],
                "greedy": [
                    {k: r[k] for k in ("stage", "valid_accuracy", "seconds")} for r in metrics.get("greedy", [])
                ],
            }
        results["pretrain"] = rows
        save(results)
    source = WORK / "mnist-e2e"
    if wanted("digits"):
        results["digits"] = curve(
            args.data / "digits.npz",
            "digits",
            sources=f"scratch,{source}:finetune,{source}:extract",
            per_class="1,5,10,25,all",
            repeats=3,
        )
        save(results)
    if wanted("negative"):
        for name, target in (("animal", args.data / "animal-mnist.npz"), ("fashion", FASHION)):
            results[name] = curve(target, name, sources=f"scratch,{source}:finetune", per_class="10,50", repeats=3)
            save(results)
    if wanted("depth"):
        results["depth"] = curve(args.data / "digits.npz", "depth", sources=str(source), per_class="10", by_depth=True)
        save(results)
    if wanted("self-taught"):
        low, high = digit_subsets(args.data)
        dae, dae_metrics = pretrained(high, "dae-5to9", unlabelled=True, epochs=5)
        labelled, labelled_metrics = pretrained(high, "labelled-5to9", epochs=5)
        results["self_taught"] = {
            "autoencoder": {"seconds": dae_metrics["seconds"], "error": dae_metrics["valid_reconstruction_error"]},
            "labelled": {"seconds": labelled_metrics["seconds"], "test_accuracy": labelled_metrics["test"]["accuracy"]},
            **curve(
                low,
                "self-taught",
                sources=f"scratch,{dae}:finetune,{labelled}:finetune,{dae}:extract,imagenet",
                per_class="5,10,25",
                repeats=3,
            ),
        }
        save(results)
    if wanted("signs"):
        results["signs"] = curve(SIGNS, "signs", sources="scratch,imagenet", per_class="1,5,10,25,50,all", repeats=3)
        save(results)


if __name__ == "__main__":
    main()
