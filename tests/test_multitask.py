"""Multi-task and multi-domain training with a tiny random backbone on generated images."""

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import graft
from graft.cli import app
from graft.core.fit import fit
from graft.core.strategies import plan_for_mode
from graft.errors import ConfigError, RunFolderError
from graft.image.backbones import create_backbone
from graft.multitask import MultiTaskObjective, build_multitask_model
from graft.multitask.objective import target_scales
from graft.multitask.tasks import Task
from tests.conftest import COLOURS, TINY_BACKBONE, make_image

TASKS = [Task("age", "regression"), Task("gender", "classification", ("male", "female"))]


@pytest.fixture
def faces(tmp_path):
    return make_faces(tmp_path / "faces")


def make_faces(root):
    """UTKFace-style names whose colour carries the labels (gender: red/blue, age: brightness)."""
    rng = np.random.default_rng(0)
    for i in range(36):
        age, gender, race = int(rng.integers(5, 80)), i % 2, i % 3
        make_image(
            root / f"{age}_{gender}_{race}_20170101{i:04d}.jpg.chip.jpg",
            (200 * gender + 20, 2 * age, 200 * (1 - gender)),
            seed=i,
            size=32,
        )
    return root


def _options(**kwargs):
    options = dict(
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=2,
        num_workers=0,
        quiet=True,
        batch_size=8,
        image_size=64,
        augment=False,
    )
    options.update(kwargs)
    return options


def _soft_model(tasks, tie_source=None):
    base = create_backbone(TINY_BACKBONE, pretrained=False).model
    return build_multitask_model(lambda: copy.deepcopy(base), tasks, "soft", dropout=0.0)


def _batches(n=24, seed=0):
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, 3, 24, 24, generator=generator)
    targets = torch.stack(
        [torch.rand(n, generator=generator) * 50 + 10, (torch.rand(n, generator=generator) > 0.5).float()], dim=1
    )
    return list(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs, targets), batch_size=8))


def _fit(model, tasks, loader, tie):
    plan = plan_for_mode("finetune", model.stage_names, lr=1e-2, unfreeze=2)
    objective = MultiTaskObjective(
        tasks, target_scales(tasks, torch.cat([t for _, t in loader]).numpy()), weighting="equal", tie=tie
    )
    return fit(model, objective, plan, loader, loader, epochs=3, patience=10)


def test_soft_sharing_with_zero_tie_equals_independent_models():
    torch.manual_seed(0)
    loader = _batches()
    soft = _soft_model(TASKS)
    alone = _soft_model(TASKS[:1])
    alone.towers["age"].load_state_dict(soft.towers["age"].state_dict())
    start = {k: v.clone() for k, v in soft.towers["age"].state_dict().items()}
    _fit(soft, TASKS, loader, tie=0.0)
    _fit(alone, TASKS[:1], [(x, y[:, :1]) for x, y in loader], tie=0.0)
    trained, reference = soft.towers["age"].state_dict(), alone.towers["age"].state_dict()
    assert any(not torch.equal(start[k], trained[k]) for k in start)  # it did train
    for key in trained:
        torch.testing.assert_close(trained[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)


def test_the_tie_pulls_towers_together():
    loader = _batches(n=16)
    distances = []
    for tie in (0.0, 3.0, 300.0):
        torch.manual_seed(0)
        model = _soft_model(TASKS)
        assert float(model.tower_distance().detach()) == 0.0  # same pretrained start
        _fit(model, TASKS, loader, tie=tie)
        distances.append(float(model.tower_distance().detach()))
    assert distances[0] > distances[1] > distances[2] >= 0


def test_missing_labels_add_nothing_and_regression_is_standardised():
    tasks = TASKS
    targets = torch.tensor([[30.0, float("nan")], [float("nan"), 1.0], [50.0, 0.0]])
    scales = target_scales(tasks, targets.numpy())
    assert scales["age"].mean == 40.0 and scales["age"].std == 10.0
    loss = MultiTaskObjective(tasks, scales, weighting="uncertainty", label_smoothing=0.0)
    outputs = {
        "age": torch.tensor([[-1.0], [123.0], [1.0]]),
        "gender": torch.tensor([[9.0, -9.0], [-5.0, 5.0], [5.0, -5.0]]),
    }
    total, parts = loss(outputs, targets)
    assert parts["age"].item() == pytest.approx(
        0.0
    )  # (30-40)/10 = -1 and (50-40)/10 = 1 predicted exactly; row 2 ignored
    assert parts["gender"].item() < 1e-3
    assert loss.log_vars.requires_grad
    with pytest.raises(ConfigError, match="task-weighting"):
        MultiTaskObjective(tasks, scales, weighting="magic")


@pytest.mark.parametrize("sharing,mode", [("hard", "extract"), ("soft", "finetune")])
def test_train_save_load_round_trip(faces, tmp_path, sharing, mode):
    summary = graft.train_multitask(
        faces,
        tmp_path / "run",
        labels="utkface",
        tasks="age,gender,race",
        sharing=sharing,
        mode=mode,
        tie=0.5 if sharing == "soft" else 0.0,
        **({"unfreeze": 1} if mode == "finetune" else {}),
        **_options(),
    )
    assert set(summary["test"]["tasks"]) == {"age", "gender", "race"}
    assert summary["test"]["tasks"]["age"]["kind"] == "regression" and "mae" in summary["test"]["tasks"]["age"]
    for name in (
        "config.json",
        "freeze_plan.json",
        "model.safetensors",
        "manifest.json",
        "metrics.json",
        "learning_curve.png",
        "confusion_matrix_race.png",
        "report.html",
    ):
        assert (tmp_path / "run" / name).is_file(), name
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 2 and set(history[0]["valid"]) == {"age", "gender", "race"}
    first, second = graft.load(tmp_path / "run"), graft.load(tmp_path / "run")
    assert first.model.sharing == sharing and len(first.model.towers) == (1 if sharing == "hard" else 3)
    a, b = first.predict([faces]), second.predict([faces])
    assert a == b and len(a) == 36
    assert set(a[0]["tasks"]) == {"age", "gender", "race"} and isinstance(a[0]["tasks"]["age"]["value"], float)
    assert set(a[0]["tasks"]["race"]["probs"]) == {"White", "Black", "Asian", "Indian", "Others"}
    metrics = graft.evaluate(tmp_path / "run")
    assert metrics["evaluated_on"].startswith("test split") and metrics["n"] == summary["test"]["tasks"]["gender"]["n"]
    assert metrics["tasks"]["gender"]["accuracy"] == pytest.approx(summary["test"]["tasks"]["gender"]["accuracy"])
    assert metrics["tasks"]["age"]["mae"] == pytest.approx(summary["test"]["tasks"]["age"]["mae"], rel=1e-4)


def test_cli_multitask_train_evaluate_predict_json(faces, tmp_path):
    runner = CliRunner()
    run = tmp_path / "cli-run"
    result = runner.invoke(
        app,
        [
            "train",
            str(faces),
            "--out",
            str(run),
            "--labels",
            "utkface",
            "--tasks",
            "age,gender",
            "--backbone",
            TINY_BACKBONE,
            "--from-scratch",
            "--epochs",
            "1",
            "--workers",
            "0",
            "--image-size",
            "64",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["kind"] == "multi-task" and summary["tasks"] == ["age", "gender"]
    result = runner.invoke(app, ["evaluate", str(run), str(faces), "--json"])
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["tasks"]) == {"age", "gender"}
    result = runner.invoke(app, ["predict", str(run), str(faces), "--json"])
    assert result.exit_code == 0 and len(json.loads(result.stdout)) == 36
    result = runner.invoke(
        app,
        [
            "train",
            str(faces),
            "--out",
            str(run),
            "--labels",
            "utkface",
            "--tasks",
            "age,gender",
            "--tie",
            "1",
            "--json",
        ],
    )
    assert result.exit_code == 2 and "--tie (transfer.tie) only applies to --sharing soft" in result.output


def test_multi_domain_one_backbone_a_head_per_domain(tmp_path, faces):
    colours = tmp_path / "colours"
    for index, (name, colour) in enumerate(COLOURS.items()):
        for i in range(8):
            make_image(colours / name / f"{i}.png", colour, seed=index * 50 + i, size=32)
    summary = graft.train_multitask(
        None, tmp_path / "run", domains={"colours": str(colours), "faces": f"{faces}:utkface:gender"}, **_options()
    )
    tasks = summary["test"]["tasks"]
    assert set(tasks) == {"colours", "faces"}
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    test_rows = manifest["splits"]["test"]
    assert tasks["colours"]["n"] == sum(1 for _, labels in test_rows if labels[0] is not None)
    assert all(
        (labels[0] is None) != (labels[1] is None) for _, labels in test_rows
    )  # each image has its own domain's label only
    loaded = graft.load(tmp_path / "run")
    assert len(loaded.model.towers) == 1 and set(loaded.classes) == {"colours", "faces"}
    assert set(graft.evaluate(loaded)["tasks"]) == {"colours", "faces"}


def test_activation_cache_is_reused_and_gives_the_same_results(faces, tmp_path):
    cache = tmp_path / "cache"
    graft.train_multitask(
        faces,
        tmp_path / "a",
        labels="utkface",
        tasks="gender",
        mode="finetune",
        unfreeze=1,
        cache_dir=cache,
        **_options(epochs=1),
    )
    cached = graft.train_multitask(
        faces, tmp_path / "b", labels="utkface", tasks="gender", mode="extract", cache_dir=cache, **_options(epochs=1)
    )
    from graft.core.cache import cache_usage

    namespaces = cache_usage(cache)["namespaces"]
    assert sorted(entry["stop"] for entry in namespaces) == [6, 7]  # the fine-tuning boundary, and pooled features
    chunks = sorted(p.stat().st_mtime_ns for p in cache.rglob("chunk-*.npy"))
    again = graft.train_multitask(
        faces, tmp_path / "b2", labels="utkface", tasks="gender", mode="extract", cache_dir=cache, **_options(epochs=1)
    )
    assert sorted(p.stat().st_mtime_ns for p in cache.rglob("chunk-*.npy")) == chunks  # read back, not recomputed
    assert again["valid_score"] == cached["valid_score"]
    direct = graft.train_multitask(
        faces, tmp_path / "c", labels="utkface", tasks="gender", mode="extract", cache=False, **_options(epochs=1)
    )
    assert cached["test"]["tasks"]["gender"]["accuracy"] == direct["test"]["tasks"]["gender"]["accuracy"]
    assert cached["valid_score"] == pytest.approx(direct["valid_score"], abs=1e-6)


def test_resuming_after_the_data_changed_is_refused(faces, tmp_path):
    run = tmp_path / "run"
    graft.train_multitask(faces, run, labels="utkface", tasks="gender", **_options(epochs=1))
    (run / "metrics.json").unlink()  # as if killed before finishing (no epoch checkpoint: resume starts over)
    sorted(faces.iterdir())[0].unlink()
    with pytest.raises(RunFolderError, match="changed since the run started"):
        graft.resume(run, quiet=True)


def test_interrupting_a_multitask_run_says_how_to_resume_and_resume_finishes_it(faces, tmp_path, monkeypatch):
    from graft.core import fit
    from graft.errors import TrainingInterrupted

    original = fit._train_one_epoch
    calls = []

    def interrupted_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(fit, "_train_one_epoch", interrupted_in_epoch_two)
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="interrupted") as raised:
        graft.train_multitask(faces, run, labels="utkface", tasks="age,gender", **_options(epochs=3))
    assert f"graft train --resume {run}" in raised.value.hint
    assert len(json.loads((run / "history.json").read_text())) == 1 and (run / "checkpoint.safetensors").is_file()
    monkeypatch.setattr(fit, "_train_one_epoch", original)
    summary = graft.resume(run, quiet=True, num_workers=0)
    assert summary["epochs_run"] == 3 and not (run / "checkpoint.safetensors").exists()
