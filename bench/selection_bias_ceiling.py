"""What importance weights can recover at best: the selection-bias construction of bench/selection_bias.py with
a converged head and the *true* selection weights (the oracle) beside graft's estimators.

    python bench/selection_bias_ceiling.py    # writes bench/results/selection_bias_ceiling.json, prints the table
    python bench/selection_bias_ceiling.py --table

EfficientNet-Lite0's pooled features of every sign-language photo are computed once (the frozen pass); each
seed then splits them as bench/selection_bias.py does (40% test, half of the rest the world the sample is
drawn from, half the unlabelled pool) and draws a biased sample: by **appearance** (the top quarter of the
features' first principal component kept with probability 0.95, the rest 0.1), or by **class** (digits 0-4
kept with 0.95, 5-9 with 0.1: a selection that depends on the label, through the image). A logistic
regression trained to convergence (scikit-learn, C=0.1) is the head; the weights are the oracle's (1 / keep
probability, what a perfect estimator would give) or graft.adaptation.importance's estimators from the pool
(domain classifier, KLIEP, and label shift by EM, which uses the sample's labels). A weight helps where the
model cannot fit every region at once; it cannot bring back regions the sample holds (almost) no photo of.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

from selection_bias import pooled_features

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "datasets" / "sign-language-digits"
RESULTS = HERE / "results" / "selection_bias_ceiling.json"
KEEP, TEST_SHARE = (0.95, 0.1), 0.4


def accuracy(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, weights=None) -> float:
    from sklearn.linear_model import LogisticRegression

    head = LogisticRegression(C=0.1, max_iter=5000).fit(x[train], y[train], sample_weight=weights)
    return float((head.predict(x[test]) == y[test]).mean())


def main() -> None:
    from sklearn.decomposition import PCA

    from graft.adaptation.importance import estimate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--table", action="store_true", help="only print the table of the saved results")
    args = parser.parse_args()
    if args.table:
        print(table(json.loads(RESULTS.read_text())["rows"]))
        return
    photos = sorted(p for p in DATA.rglob("*") if p.suffix.upper() == ".JPG")
    x = pooled_features(photos)
    y = np.array([p.parent.name for p in photos])
    first = PCA(n_components=1, random_state=0).fit_transform(x)[:, 0]
    favoured = {"appearance": first >= np.quantile(first, 0.75), "class": np.isin(y, list("01234"))}
    rows = []
    for bias, chosen in favoured.items():
        for seed in map(int, args.seeds.split(",")):
            rng = np.random.default_rng(seed)
            order = rng.permutation(len(photos))
            cut = int(TEST_SHARE * len(photos))
            test, world = order[:cut], order[cut:]
            drawn, pool = world[: len(world) // 2], world[len(world) // 2 :]
            keep = np.where(chosen[drawn], *KEEP)
            biased = drawn[rng.random(len(drawn)) < keep]
            uniform = drawn[rng.permutation(len(drawn))[: len(biased)]]
            oracle = 1 / np.where(chosen[biased], *KEEP)
            runs = {"uniform sample": (uniform, None), "biased sample": (biased, None)}
            runs["biased, true weights"] = (biased, oracle / oracle.mean())
            classes = np.unique(y, return_inverse=True)[1]
            for estimator in ("classifier", "kliep", "labelshift"):
                labelled = dict(labels=classes[biased], valid_labels=classes[biased[:1]])
                weights = estimate(x[biased], x[pool], x[biased[:1]], estimator, seed=seed, **labelled).train
                runs[f"biased, weighted ({estimator})"] = (biased, weights)
            for name, (train, weights) in runs.items():
                row = {"bias": bias, "seed": seed, "run": name, "examples": len(train)}
                row["test_accuracy"] = accuracy(x, y, train, test, weights)
                if weights is not None:
                    row["effective_sample_size"] = float(weights.sum() ** 2 / (weights**2).sum())
                    row["correlation_with_true_weights"] = float(np.corrcoef(weights, oracle)[0, 1])
                rows.append(row)
                print(json.dumps(row), flush=True)
    RESULTS.write_text(json.dumps({"keep": KEEP, "rows": rows}, indent=1))
    print(table(rows))


def table(rows: list[dict]) -> str:
    lines = ["| bias | training sample | test accuracy (mean over seeds) | ESS | corr. with true weights |"]
    lines.append("|---|---|---|---|---|")
    for bias in dict.fromkeys(r["bias"] for r in rows):
        for name in dict.fromkeys(r["run"] for r in rows if r["bias"] == bias):
            picked = [r for r in rows if r["bias"] == bias and r["run"] == name]
            mean = statistics.mean(r["test_accuracy"] for r in picked)
            ess = [r["effective_sample_size"] for r in picked if "effective_sample_size" in r]
            corr = [r["correlation_with_true_weights"] for r in picked if "correlation_with_true_weights" in r]
            examples = statistics.mean(r["examples"] for r in picked)
            size = f"{statistics.mean(ess):.0f} of {examples:.0f}" if ess else f"{examples:.0f} examples"
            agreement = f"{statistics.mean(corr):.2f}" if corr else ""
            lines.append(f"| {bias} | {name} | {100 * mean:.1f} | {size} | {agreement} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
