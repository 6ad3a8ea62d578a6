"""graft against fastai and a plain PyTorch loop, same backbone, weights, data and machine (issue 3).

    python bench/compare.py [--only signs|dogs] [--epochs N] [--contenders graft,fastai,plain]

Contenders, each in its own subprocess, one after another, all with graft's malloc thresholds in the
environment (so the comparison is about the training method, not the allocator):

- **graft**: ``graft train`` with its defaults for the mode (frozen stages computed once and cached;
  fine-tuning trains the tail on cached augmented views), cold cache.
- **fastai**: ``vision_learner`` with the same timm architecture (``tf_efficientnet_lite0``) and the
  same ImageNet weights (passed to timm through ``pretrained_cfg_overlay``), ``aug_transforms()``,
  ``fine_tune(epochs)`` with its defaults (one frozen epoch, then everything unfrozen).
- **plain**: the PyTorch transfer-learning tutorial's loop: timm model with the same weights, the
  classifier replaced, frozen backbone recomputed every batch (``extract``) or every layer trained
  (``finetune``), RandomResizedCrop + flip, SGD with momentum and StepLR.

Reported: wall time, time to the best validation epoch, test accuracy. Results go to
bench/out/compare.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "bench" / "out"
TUNED = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
ARCH = "tf_efficientnet_lite0"

PROJECTS = {
    "signs": {"data": DATASETS / "sign-language-digits", "mode": "finetune", "epochs": 10},
    "dogs": {"data": DATASETS / "dogs-vs-cats-small", "mode": "extract", "epochs": 10},
}


def _timm_weights_file(folder: Path) -> Path:
    """graft's offline ImageNet weights under timm's key names, for fastai and the plain loop."""
    from safetensors.torch import save_file

    from graft.image.backbones import create_backbone

    path = folder / f"{ARCH}.safetensors"
    if not path.is_file():
        save_file({k: v.contiguous() for k, v in create_backbone(ARCH).model.state_dict().items()}, str(path))
    return path


def _test_items(data: Path) -> list[tuple[Path, str]]:
    return sorted((p, p.parent.name) for p in (data / "test").rglob("*") if p.is_file())


def run_fastai(data: Path, mode: str, epochs: int, weights: Path) -> dict:
    from fastai.callback.core import Callback
    from fastai.metrics import accuracy
    from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms, vision_learner

    class EpochTimes(Callback):
        order = 99

        def before_fit(self):
            self.rows = getattr(self, "rows", [])

        def after_epoch(self):
            names = list(self.recorder.metric_names)
            value = self.recorder.log[names.index("accuracy")] if "accuracy" in names else None
            self.rows.append(
                {
                    "seconds_since_start": time.perf_counter() - began,
                    "valid_accuracy": None if value is None else float(value),
                }
            )
            print(f"fastai epoch {len(self.rows)}: {self.rows[-1]}", file=sys.stderr, flush=True)

    began = time.perf_counter()
    dls = ImageDataLoaders.from_folder(
        data, train="train", valid="valid", item_tfms=Resize(224), batch_tfms=aug_transforms(), bs=32
    )
    learn = vision_learner(dls, ARCH, metrics=accuracy, pretrained=True, pretrained_cfg_overlay={"file": str(weights)})
    timer = EpochTimes()
    learn.add_cb(timer)
    rows = []
    if mode == "extract":  # fastai's feature-extraction recipe: keep the body frozen, fit the head
        learn.freeze()
        learn.fit_one_cycle(epochs)
        rows = timer.rows
    else:
        learn.fine_tune(epochs - 1, freeze_epochs=1)  # same total epoch count as the others
        rows = timer.rows
    fit_seconds = time.perf_counter() - began
    learn.remove_cb(timer)  # get_preds below fires epoch events too
    test = _test_items(data)
    test_dl = learn.dls.test_dl([p for p, _ in test])
    predictions, _ = learn.get_preds(dl=test_dl)
    vocab = list(learn.dls.vocab)
    correct = sum(vocab[int(i)] == label for i, (_, label) in zip(predictions.argmax(1), test))
    return {
        "epochs": rows,
        "seconds": time.perf_counter() - began,
        "fit_seconds": fit_seconds,
        "test_accuracy": correct / len(test),
    }


def run_plain(data: Path, mode: str, epochs: int, weights: Path) -> dict:
    """The PyTorch transfer-learning tutorial's recipe, with timm's model and the same weights."""
    import timm
    import torch
    from safetensors.torch import load_file
    from torchvision import datasets, transforms

    torch.manual_seed(0)
    began = time.perf_counter()
    normalize = transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    train_tf = transforms.Compose(
        [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
    )
    eval_tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize])
    sets = {
        "train": datasets.ImageFolder(data / "train", train_tf),
        "valid": datasets.ImageFolder(data / "valid", eval_tf),
        "test": datasets.ImageFolder(data / "test", eval_tf),
    }
    loaders = {
        k: torch.utils.data.DataLoader(v, batch_size=32, shuffle=k == "train", num_workers=2) for k, v in sets.items()
    }
    model = timm.create_model(ARCH, pretrained=False)
    model.load_state_dict(load_file(str(weights)))
    if mode == "extract":
        for parameter in model.parameters():
            parameter.requires_grad = False
    model.reset_classifier(len(sets["train"].classes))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.001, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)
    criterion = torch.nn.CrossEntropyLoss()

    def accuracy(split: str) -> float:
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for inputs, labels in loaders[split]:
                correct += int((model(inputs).argmax(1) == labels).sum())
                total += len(labels)
        return correct / total

    rows, best, best_state = [], -1.0, None
    fit_began = time.perf_counter()
    for _ in range(epochs):
        model.train()
        for inputs, labels in loaders["train"]:
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
        scheduler.step()
        valid = accuracy("valid")
        rows.append({"seconds_since_start": time.perf_counter() - began, "valid_accuracy": valid})
        if valid > best:
            best, best_state = valid, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return {
        "epochs": rows,
        "seconds": time.perf_counter() - began,
        "fit_seconds": time.perf_counter() - fit_began,
        "test_accuracy": accuracy("test"),
    }


def run_graft(data: Path, mode: str, epochs: int, scratch: Path) -> dict:
    run = scratch / f"graft-{data.name}"
    command = [
        sys.executable,
        "-m",
        "graft",
        "train",
        str(data),
        "--out",
        str(run),
        "--mode",
        mode,
        "--epochs",
        str(epochs),
        "--cache-dir",
        str(scratch / "graft-cache"),
        "--json",
    ]
    began = time.perf_counter()
    completed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - began
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr[-3000:])
    summary = json.loads(completed.stdout)
    history = json.loads((run / "history.json").read_text())
    prepare = summary["phase_seconds"]["prepare"]
    elapsed, rows = prepare, []
    for record in history:
        elapsed += record["seconds"]
        rows.append({"seconds_since_start": elapsed, "valid_accuracy": record["valid_accuracy"]})
    return {
        "epochs": rows,
        "seconds": wall,
        "fit_seconds": summary["seconds"],
        "test_accuracy": summary["test_accuracy"],
        "best_epoch": summary["best_epoch"],
        "phase_seconds": summary["phase_seconds"],
        "command": " ".join(command[3:]),
    }


def _inner(contender: str, project: str, epochs: int, scratch: Path) -> None:
    spec = PROJECTS[project]
    weights = _timm_weights_file(scratch)
    runner = {"fastai": run_fastai, "plain": run_plain}[contender]
    print(json.dumps(runner(spec["data"], spec["mode"], epochs, weights)))


def _time_to_best(result: dict) -> tuple[float, float]:
    best = max((r for r in result["epochs"] if r["valid_accuracy"] is not None), key=lambda r: r["valid_accuracy"])
    return best["seconds_since_start"], best["valid_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inner", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=sorted(PROJECTS))
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--contenders", default="graft,fastai,plain")
    parser.add_argument("--scratch", type=Path)
    parser.add_argument("--verbose", action="store_true", help="show the contenders' progress")
    args = parser.parse_args()
    if args.inner:
        contender, project, epochs = args.inner
        _inner(contender, project, int(epochs), args.scratch)
        return
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="graft-compare-"))
    scratch.mkdir(parents=True, exist_ok=True)
    environ = {**os.environ, **TUNED, "GRAFT_ALLOCATOR": "system"}
    path = OUT / "compare.json"
    results = json.loads(path.read_text()) if path.is_file() else {"runs": []}
    results.update(
        {
            "date": date.today().isoformat(),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}",
        }
    )
    for project in [args.only] if args.only else PROJECTS:
        spec = PROJECTS[project]
        epochs = args.epochs or spec["epochs"]
        for contender in args.contenders.split(","):
            began = time.perf_counter()
            if contender == "graft":
                result = run_graft(spec["data"], spec["mode"], epochs, scratch)
            else:
                completed = subprocess.run(
                    [sys.executable, __file__, "--inner", contender, project, str(epochs), "--scratch", str(scratch)],
                    stdout=subprocess.PIPE,
                    stderr=None if args.verbose else subprocess.PIPE,
                    text=True,
                    env=environ,
                    cwd=ROOT,
                )
                if completed.returncode != 0:
                    print(f"{contender} on {project} failed:\n{(completed.stderr or '')[-3000:]}", file=sys.stderr)
                    continue
                result = json.loads(completed.stdout.strip().splitlines()[-1])
                result["seconds"] = time.perf_counter() - began  # whole process, like graft's
            to_best, best_valid = _time_to_best(result)
            row = {
                "project": project,
                "mode": spec["mode"],
                "contender": contender,
                "epochs": epochs,
                "wall_seconds": result["seconds"],
                "seconds_to_best_valid": to_best,
                "best_valid_accuracy": best_valid,
                "test_accuracy": result["test_accuracy"],
                "detail": result,
            }
            results["runs"] = [r for r in results["runs"] if (r["project"], r["contender"]) != (project, contender)] + [
                row
            ]
            OUT.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2))
            print(
                f"{project} {contender}: wall {row['wall_seconds']:.0f}s, best valid {best_valid:.4f} at "
                f"{to_best:.0f}s, test {row['test_accuracy']:.4f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
