"""End to end on generated images with a tiny random backbone: train, load, predict, evaluate, JSON shapes."""

import json

import pytest

import graft
from graft.errors import DataError, RunFolderError
from tests.conftest import TINY_BACKBONE


def _train(data, out, **kwargs):
    options = dict(backbone=TINY_BACKBONE, pretrained=False, epochs=2, num_workers=0, quiet=True, batch_size=8)
    options.update(kwargs)
    return graft.train(data, out, **options)


def test_train_writes_a_complete_run_folder(class_folder, tmp_path):
    summary = _train(class_folder, tmp_path / "run", mode="finetune", unfreeze=2)
    assert set(summary) >= {"run", "best_epoch", "valid_accuracy", "seconds", "test_accuracy", "params"}
    run = tmp_path / "run"
    for name in (
        "config.json",
        "freeze_plan.json",
        "model.safetensors",
        "history.json",
        "metrics.json",
        "manifest.json",
        "learning_curve.png",
        "confusion_matrix.png",
        "report.html",
    ):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["classes"] == ["blue", "green", "red"]
    assert config["preprocessing"]["input_size"] == 160
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"] == {"train": 24, "valid": 6}
    assert len(json.loads((run / "history.json").read_text())) == 2


def test_saved_run_loads_and_predicts_identically(split_folder, tmp_path):
    _train(split_folder, tmp_path / "run", mode="extract", head="mlp")
    first = graft.load(tmp_path / "run")
    second = graft.load(tmp_path / "run")
    images = [str(split_folder / "test" / "red" / "0.png"), str(split_folder / "test" / "blue")]
    a, b = first.predict(images), second.predict(images)
    assert a == b
    assert len(a) == 1 + 3
    assert set(a[0]) == {"image", "label", "prob", "probs"} and set(a[0]["probs"]) == {"blue", "green", "red"}
    assert abs(sum(a[0]["probs"].values()) - 1) < 1e-5


def test_evaluate_shape_matches_the_documented_json(split_folder, tmp_path):
    _train(split_folder, tmp_path / "run", mode="extract")
    metrics = graft.evaluate(tmp_path / "run", split_folder)
    assert {"accuracy", "loss", "n", "per_class", "confusion_matrix"} <= set(metrics)
    assert metrics["n"] == 9
    assert sum(map(sum, metrics["confusion_matrix"])) == 9
    assert set(metrics["per_class"]["red"]) == {"precision", "recall", "f1", "support"}


def test_evaluate_without_data_uses_the_runs_test_split_for_every_kind_of_run(split_folder, class_folder, tmp_path):
    summary = _train(split_folder, tmp_path / "run", mode="extract")
    metrics = graft.evaluate(tmp_path / "run")
    assert metrics["evaluated_on"].startswith("test split") and metrics["n"] == 9
    assert metrics["accuracy"] == pytest.approx(summary["test_accuracy"])
    _train(class_folder, tmp_path / "plain", mode="extract")  # no test split: its valid split
    assert graft.evaluate(tmp_path / "plain")["evaluated_on"].startswith("valid split")


def test_run_kinds_are_looked_up_in_a_registry_and_an_unknown_kind_is_a_clear_error(split_folder, tmp_path):
    from graft.core.runs import RUN_KINDS, register_run_kind

    _train(split_folder, tmp_path / "run", mode="extract", epochs=1)
    config_path = tmp_path / "run" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["kind"] == "classifier"
    config["kind"] = "plugin-kind"
    config_path.write_text(json.dumps(config))
    with pytest.raises(RunFolderError, match="unknown run kind 'plugin-kind'"):
        graft.load(tmp_path / "run")
    register_run_kind("plugin-kind", "graft.core.classifier:KIND")
    try:
        assert graft.load(tmp_path / "run").classes == ["blue", "green", "red"]
    finally:
        RUN_KINDS.unregister("plugin-kind")


def test_learns_separable_colours(class_folder, tmp_path):
    summary = _train(class_folder, tmp_path / "run", mode="extract", epochs=10, lr=3e-2, augment=False)
    assert summary["valid_accuracy"] >= 0.8


def test_missing_data_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        _train(tmp_path / "nope", tmp_path / "run")


def test_loading_a_folder_without_weights_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunFolderError, match="has no config.json"):
        graft.load(tmp_path / "empty")


def test_a_handful_of_batches_trains_with_a_constant_rate_instead_of_crashing(class_folder, tmp_path):
    """OneCycleLR divides by zero at 4 steps: 24 training images in batches of 6 are 4 steps per phase."""
    summary = _train(class_folder, tmp_path / "run", mode="finetune", unfreeze=1, head_epochs=1, epochs=2, batch_size=6)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["phase"] for r in history] == ["head", "main"] and summary["epochs_run"] == 2
    lr = json.loads((tmp_path / "run" / "config.json").read_text())["hyperparameters"]["lr"]
    assert history[0]["lr"] == pytest.approx(lr)  # constant: a one-cycle schedule would have annealed it to ~0
