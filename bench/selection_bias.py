"""Sample-selection bias on real data: a training sample of sign-language digits drawn mostly from one end of
the photos' range, tested on an unbiased test set, with and without importance weights.

    python bench/selection_bias.py            # writes bench/results/selection_bias.json and prints the table

The world is every photo of the dataset: a seeded 40% is the test set (labelled, unbiased), the rest the
world: half of it is where the training sample is drawn from, the other half the unlabelled pool handed to
--reweight (drawn like the world, and not the sample's own photos). The biased sample keeps a photo with
probability 0.95 if it is in the top 25% of the dataset by ``--bias`` and 0.1 otherwise (``--keep
0.95,0.1``; a milder ``--keep 0.9,0.3`` leaves every region some support): ``brightness`` (mean grey level;
measured: it costs a frozen-feature classifier nothing), or ``appearance`` (the first principal component of
the backbone's pooled features, which on these photos follows lighting, skin tone and background together),
or ``class`` (digits 0-4 instead of the top quarter: a selection that depends on the label); the reference
is a uniformly drawn sample of the same size. Each is ``graft train --mode extract --reweight POOL``
evaluated on the test photos (seen by none of them); the unweighted ones with ``--weight-estimator none``,
so every run trains and refits its head the same way and only the weights differ.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

import numpy as np
from PIL import Image

import graft

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "datasets" / "sign-language-digits"
RESULTS = HERE / "results" / "selection_bias.json"
BRIGHT_SHARE, KEEP_BRIGHT, KEEP_OTHER, TEST_SHARE = 0.25, 0.95, 0.1, 0.4


def link(files: list[Path], root: Path, labelled: bool = True) -> Path:
    shutil.rmtree(root, ignore_errors=True)
    for path in files:
        target = root / path.parent.name / path.name if labelled else root / f"{path.parent.name}_{path.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)
    return root


def brightness(path: Path) -> float:
    with Image.open(path) as image:
        return float(np.asarray(image.convert("L").resize((32, 32))).mean())


def pooled_features(paths: list[Path]) -> np.ndarray:
    """EfficientNet-Lite0's pooled features of each photo (the frozen pass, no cache)."""
    from graft.image.backbones import create_backbone
    from graft.image.frozen_pass import frozen_pass
    from graft.image.model import build_transfer_model

    loaded = create_backbone("tf_efficientnet_lite0")
    model = build_transfer_model(loaded.model, "linear", 2, input_size=loaded.preprocessing.input_size)
    items = [(str(p), 0) for p in paths]
    rows = frozen_pass(model, items, len(model.stages), loaded.preprocessing, round_=None, seed=None, keys=None,
                       workers=None, device=None, progress=None, description="")  # fmt: skip
    return np.concatenate(list(rows))


def appearance(paths: list[Path]) -> np.ndarray:
    """Each photo's coordinate on the first principal component of EfficientNet-Lite0's pooled features."""
    from sklearn.decomposition import PCA

    return PCA(n_components=1, random_state=0).fit_transform(pooled_features(paths))[:, 0]


def main() -> None:  # seeds already in bench/results/selection_bias.json are kept, not rerun
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--bias", choices=("brightness", "appearance", "class"), default="appearance")
    parser.add_argument("--work", type=Path, default=Path("/tmp/graft-bias"))
    parser.add_argument("--keep", default=f"{KEEP_BRIGHT},{KEEP_OTHER}", help="keep rates: top quarter, the rest")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument(
        "--runs", default="uniform,none,classifier,kliep,labelshift",
        help="which runs: uniform (the reference), then the biased sample with each estimator (none: unweighted)",
    )  # fmt: skip
    args = parser.parse_args()
    keep_top, keep_other = map(float, args.keep.split(","))
    photos = sorted(p for p in DATA.rglob("*") if p.suffix.upper() == ".JPG")
    if args.bias == "class":
        favoured = np.array([p.parent.name in ("0", "1", "2", "3", "4") for p in photos])
    else:
        light = np.array([brightness(p) for p in photos]) if args.bias == "brightness" else appearance(photos)
        favoured = light >= np.quantile(light, 1 - BRIGHT_SHARE)
    saved = json.loads(args.results.read_text()) if args.results.is_file() else {}
    results = (
        saved.get("results", []) if saved.get("bias") == args.bias and saved.get("keep", args.keep) == args.keep else []
    )
    for seed in map(int, args.seeds.split(",")):
        if any(r["seed"] == seed for r in results):
            continue
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(photos))
        cut = int(TEST_SHARE * len(photos))
        test_rows, world_rows = sorted(order[:cut]), order[cut:]
        sampled_rows, pool_rows = sorted(world_rows[: len(world_rows) // 2]), sorted(world_rows[len(world_rows) // 2 :])
        test = link([photos[i] for i in test_rows], args.work / f"test-{seed}")
        world = [photos[i] for i in sampled_rows]
        bright = favoured[sampled_rows]
        pool = link([photos[i] for i in pool_rows], args.work / f"pool-{seed}", labelled=False)
        keep = rng.random(len(world)) < np.where(bright, keep_top, keep_other)
        biased = [p for p, k in zip(world, keep) if k]
        uniform = [world[i] for i in sorted(rng.permutation(len(world))[: len(biased)])]
        folders = {
            "biased": link(biased, args.work / f"biased-{seed}"),
            "uniform": link(uniform, args.work / f"uniform-{seed}"),
        }
        unweighted = {"reweight": pool, "weight_estimator": "none"}  # the same run and head refit, weights all 1
        runs = {
            "uniform sample (reference)": (folders["uniform"], unweighted),
            "biased sample": (folders["biased"], unweighted),
            "biased, weighted (classifier)": (folders["biased"], {"reweight": pool, "weight_estimator": "classifier"}),
            "biased, weighted (KLIEP)": (folders["biased"], {"reweight": pool, "weight_estimator": "kliep"}),
            "biased, weighted (label shift)": (folders["biased"], {"reweight": pool, "weight_estimator": "labelshift"}),
        }
        wanted = args.runs.split(",")
        for name, (folder, options) in runs.items():
            if ("uniform" if name.startswith("uniform") else options["weight_estimator"]) not in wanted:
                continue
            out = args.work / "runs" / f"{name.split(' ')[0]}-{options.get('weight_estimator', 'none')}-{seed}"
            summary = graft.train(folder, out, seed=seed, quiet=True, overwrite=True, **options)
            accuracy = graft.evaluate(out, test)["accuracy"]
            entry = {"seed": seed, "run": name, "train_examples": len(biased), "test_accuracy": accuracy}
            if "importance" in summary:
                entry["effective_sample_size"] = summary["importance"]["effective_sample_size"]
            results.append(entry)
            print(json.dumps(entry), flush=True)
            args.results.write_text(json.dumps({"bias": args.bias, "keep": args.keep, "results": results}, indent=1))
    print(table(results))


def table(results: list[dict]) -> str:
    names = list(dict.fromkeys(r["run"] for r in results))
    lines = ["| training sample | test accuracy (mean +- std over seeds) | effective sample size |", "|---|---|---|"]
    for name in names:
        values = [r["test_accuracy"] for r in results if r["run"] == name]
        ess = [r["effective_sample_size"] for r in results if r["run"] == name and "effective_sample_size" in r]
        lines.append(
            f"| {name} | {100 * statistics.mean(values):.1f} +- {100 * statistics.pstdev(values):.1f} | "
            + (
                f"{statistics.mean(ess):.0f} of {statistics.mean(r['train_examples'] for r in results):.0f}"
                if ess
                else ""
            )
            + " |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
