"""Pre-training a source network (issue 17): arrays (.npz, IDX) read as image data, graft pretrain end to
end and greedy layer-wise, and a run folder as the backbone of the next transfer."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import graft
from graft.errors import BackboneError, ConfigError, DataError


def patterns(count: int, seed: int, side: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Three learnable classes of noisy uint8 images: horizontal stripes, vertical stripes, a bright centre."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:side, 0:side]
    shapes = [(rows // 3) % 2, (cols // 3) % 2, ((abs(rows - side / 2) < 5) & (abs(cols - side / 2) < 5))]
    labels = np.arange(count) % 3
    images = np.stack([shapes[label] * 200 + rng.integers(0, 50, (side, side)) for label in labels])
    return images.astype(np.uint8), labels


@pytest.fixture
def array_file(tmp_path) -> Path:
    x_train, y_train = patterns(90, 0)
    x_test, y_test = patterns(30, 1)
    path = tmp_path / "shapes.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def write_idx(path: Path, values: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, values.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in values.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + values.astype(np.uint8).tobytes())


def test_arrays_unpack_once_into_image_folders_from_npz_and_idx(tmp_path, array_file):
    from graft.image.arrays import as_image_folder, read_arrays

    folder = as_image_folder(array_file, cache_root=tmp_path / "cache", quiet=True)
    assert sorted(p.name for p in folder.iterdir()) == ["test", "train"]
    assert sum(1 for _ in (folder / "train").rglob("*.png")) == 90 and len(list((folder / "train").iterdir())) == 3
    stamp = next((folder / "train" / "0").iterdir()).stat().st_mtime_ns
    assert as_image_folder(array_file, cache_root=tmp_path / "cache", quiet=True) == folder  # reused, not rewritten
    assert next((folder / "train" / "0").iterdir()).stat().st_mtime_ns == stamp
    # IDX files as MNIST ships them give the same arrays
    idx = tmp_path / "idx"
    idx.mkdir()
    x_train, y_train = patterns(90, 0)
    write_idx(idx / "train-images-idx3-ubyte.gz", x_train)
    write_idx(idx / "train-labels-idx1-ubyte.gz", y_train)
    splits, _ = read_arrays(idx)
    assert np.array_equal(splits["train"][0], x_train) and np.array_equal(splits["train"][1], y_train)
    # floats in [0, 1] and a trailing channel axis are accepted
    np.savez(tmp_path / "floats.npz", x_train=x_train[..., None] / 255.0, y_train=y_train)
    assert np.abs(read_arrays(tmp_path / "floats.npz")[0]["train"][0].astype(int) - x_train).max() <= 1


def test_bad_arrays_are_refused_with_what_to_fix(tmp_path):
    from graft.image.arrays import read_arrays

    x, y = patterns(9, 0)
    np.savez(tmp_path / "keys.npz", images=x, labels=y)
    with pytest.raises(DataError, match=r"no x_train and y_train arrays \(it has images, labels\)"):
        read_arrays(tmp_path / "keys.npz")
    np.savez(tmp_path / "count.npz", x_train=x, y_train=y[:5])
    with pytest.raises(DataError, match="has 9 train images but 5 labels"):
        read_arrays(tmp_path / "count.npz")
    np.savez(tmp_path / "objects.npz", x_train=np.array([{"a": 1}] * 9, dtype=object), y_train=y)
    with pytest.raises(DataError, match="could not read"):  # never unpickled
        read_arrays(tmp_path / "objects.npz")
    (tmp_path / "idx").mkdir()
    (tmp_path / "idx" / "train-images-idx3-ubyte").write_bytes(b"\x08\x00\x00\x01junk")
    (tmp_path / "idx" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="not an IDX file"):
        read_arrays(tmp_path / "idx")


def test_pretrain_greedy_then_the_run_is_a_backbone(tmp_path, array_file, monkeypatch):
    summary = graft.pretrain(array_file, tmp_path / "source", greedy=True, greedy_epochs=1, epochs=2, quiet=True)
    assert summary["backbone"] == "graft_cnn" and summary["unfreeze"] == 5 and summary["epochs_run"] == 2
    metrics = json.loads((tmp_path / "source" / "metrics.json").read_text())
    assert [record["stage"] for record in metrics["greedy"]] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert all(record["epochs"] == 1 and len(record["history"]) == 1 for record in metrics["greedy"])
    assert metrics["test"]["accuracy"] >= 0.6  # three easy classes
    assert "greedy layer-wise (valid accuracy after each stage)" in (tmp_path / "source" / "report.html").read_text()

    # the run as a backbone: extract mode keeps its stages exactly; the new run records the architecture
    # and the weights file, and loads after the source run is gone
    graft.train(array_file, tmp_path / "target", backbone=str(tmp_path / "source"), epochs=2, quiet=True)
    config = json.loads((tmp_path / "target" / "config.json").read_text())
    assert config["backbone"]["name"] == "graft_cnn" and config["preprocessing"]["input_size"] == 32
    assert config["backbone"]["load_report"]["missing_keys"] == []
    from safetensors.torch import load_file

    source, target = (
        load_file(tmp_path / "source" / "model.safetensors"),
        load_file(tmp_path / "target" / "model.safetensors"),
    )
    stages = [key for key in source if key.startswith("stages.")]
    assert stages and all(np.array_equal(source[key].numpy(), target[key].numpy()) for key in stages)
    from graft.core.advisor import advise  # graft advise measures the target against the run's stages too

    advice = advise(array_file, backbone=str(tmp_path / "source"), per_class=4).to_dict()
    assert advice["evidence"]["stages"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert advice["plan"]["mode"] in ("extract", "finetune") and 0 <= advice["similarity"] <= 1
    shutil.rmtree(tmp_path / "source")
    assert graft.evaluate(tmp_path / "target", array_file)["accuracy"] >= 0.6


def test_pretraining_options_that_do_not_apply_are_refused(tmp_path, array_file, class_folder):
    with pytest.raises(ConfigError, match="--greedy-epochs .* only with --from-scratch --mode finetune"):
        graft.train(class_folder, tmp_path / "a", mode="finetune", greedy_epochs=1, quiet=True)
    with pytest.raises(ConfigError, match="--greedy-epochs only applies with --greedy"):
        graft.pretrain(array_file, tmp_path / "b", greedy_epochs=1, quiet=True)
    with pytest.raises(BackboneError, match="'graft_resnet' has no pretrained weights"):
        graft.train(class_folder, tmp_path / "c", backbone="graft_resnet", quiet=True)
    graft.pretrain(array_file, tmp_path / "src", arch="graft_resnet", epochs=1, quiet=True)
    with pytest.raises(ConfigError, match="--weights does not apply with --backbone"):
        graft.train(class_folder, tmp_path / "d", backbone=str(tmp_path / "src"), weights=str(array_file), quiet=True)
    with pytest.raises(ConfigError, match="--from-scratch does not apply with --backbone"):
        graft.train(class_folder, tmp_path / "e", backbone=str(tmp_path / "src"), pretrained=False, quiet=True)


def test_pruning_the_activation_cache_leaves_unpacked_arrays_alone(tmp_path, array_file):
    from graft.core.cache import prune_cache
    from graft.image.arrays import as_image_folder

    folder = as_image_folder(array_file, cache_root=tmp_path, quiet=True)
    prune_cache(tmp_path, max_bytes=0, older_than_days=0)
    assert folder.is_dir() and any(folder.rglob("*.png"))


@pytest.fixture
def short_points(monkeypatch):
    """Curve points of two epochs: the tests check the bookkeeping, not the accuracies."""
    import graft.pretraining.curve as curve

    monkeypatch.setattr(curve, "MIN_EPOCHS", 2)
    monkeypatch.setattr(curve, "MAX_EPOCHS", 2)


def test_curve_per_class_compares_sources_says_so_in_words_and_resumes(tmp_path, array_file, short_points, monkeypatch):
    graft.pretrain(array_file, tmp_path / "source", epochs=1, quiet=True)
    sources = f"scratch,{tmp_path / 'source'}:finetune"
    result = graft.curve(array_file, tmp_path / "curve", sources=sources, per_class="2,5", repeats=2, quiet=True)
    assert len(result["points"]) == 2 * 2 * 2 and result["judged_on"] == "test"
    assert set(result["table"]) == {"scratch", "source:finetune"} and set(result["table"]["scratch"]) == {"2", "5"}
    rows = result["verdicts"]["source:finetune"]
    assert [row["per_class"] for row in rows] == ["2", "5"]
    assert all(row["verdict"] in ("helps", "hurts", "no difference") for row in rows)
    assert result["summary"][0].startswith("source:finetune against scratch: ")
    assert (tmp_path / "curve" / "curve.png").stat().st_size > 10_000
    # nested draws: the 5 per class of a repeat hold its 2 per class, and every source sees the same draw
    from graft.pretraining.curve import sample, target_splits

    pool = target_splits(str(array_file), 0).pool
    assert set(sample(pool, 2, 1, 0)) <= set(sample(pool, 5, 1, 0)) and sample(pool, 2, 0, 0) != sample(pool, 2, 1, 0)
    # a finished (or killed) curve is not trained again: its points are read back
    import graft.pretraining.curve as curve

    monkeypatch.setattr(curve, "train_point", lambda *args, **kwargs: pytest.fail("retrained a saved point"))
    again = graft.curve(array_file, tmp_path / "curve", sources=sources, per_class="2,5", repeats=2, quiet=True)
    assert again["points"] == result["points"]
    with pytest.raises(ConfigError, match="holds a curve with other settings"):
        graft.curve(array_file, tmp_path / "curve", sources="scratch", per_class="2", quiet=True)
    with pytest.raises(ConfigError, match="--per-class 40 is more than the smallest class's"):
        graft.curve(array_file, tmp_path / "other", sources="scratch", per_class="40", quiet=True)


def test_curve_by_depth_transfers_the_first_n_stages_frozen_and_fine_tuned(tmp_path, array_file, short_points):
    graft.pretrain(array_file, tmp_path / "source", epochs=1, quiet=True)
    result = graft.curve(
        array_file, tmp_path / "depth", sources=str(tmp_path / "source"), per_class="5", by_depth=True, quiet=True
    )
    assert result["stages"] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    assert len(result["points"]) == 1 + 2 * 5  # scratch once, then frozen and fine-tuned for n = 1..5
    assert set(result["table"]) == {"scratch", "frozen", "fine-tuned"} and sorted(result["table"]["frozen"]) == [
        1,
        2,
        3,
        4,
        5,
    ]
    assert result["summary"] and (tmp_path / "depth" / "curve.png").is_file()
    # the weights of n = 2 hold exactly the source's first two stages
    from safetensors.torch import load_file

    first_two = load_file(tmp_path / "depth" / "weights" / "first-2.safetensors")
    assert {key.split(".")[1] for key in first_two} == {"stem", "layer1"}


def test_self_taught_features_from_unlabelled_images_become_a_backbone(tmp_path, array_file):
    from graft.errors import RunFolderError

    summary = graft.pretrain(array_file, tmp_path / "dae", unlabelled=True, epochs=3, quiet=True)
    assert summary["kind"] == "self-taught" and summary["epochs_run"] == 3
    history = json.loads((tmp_path / "dae" / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # it learns to rebuild the clean images
    config = json.loads((tmp_path / "dae" / "config.json").read_text())
    assert config["data"]["labels"] == "unused" and config["objective"]["name"] == "denoising autoencoder"
    with pytest.raises(RunFolderError, match="self-taught run: it learned features without labels"):
        graft.load(tmp_path / "dae")
    graft.train(array_file, tmp_path / "probe", backbone=str(tmp_path / "dae"), epochs=2, quiet=True)
    from safetensors.torch import load_file

    source, target = (
        load_file(tmp_path / "dae" / "model.safetensors"),
        load_file(tmp_path / "probe" / "model.safetensors"),
    )
    stages = [key for key in target if key.startswith("stages.")]
    assert stages and all(np.array_equal(source[key].numpy(), target[key].numpy()) for key in stages)
    # fine-tuned from a self-taught run, its stages train at the head's rate unless told otherwise
    tuned = graft.train(
        array_file, tmp_path / "tuned", backbone=str(tmp_path / "dae"), mode="finetune", epochs=1, quiet=True
    )
    assert json.loads((tmp_path / "tuned" / "config.json").read_text())["hyperparameters"]["backbone_lr_mult"] == 1.0
    assert tuned["epochs_run"] == 1
    with pytest.raises(ConfigError, match="--greedy trains with labels"):
        graft.pretrain(array_file, tmp_path / "both", unlabelled=True, greedy=True, quiet=True)


def test_pretrain_and_curve_on_the_command_line_answer_json(tmp_path, array_file, short_points):
    from typer.testing import CliRunner

    from graft.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app, ["pretrain", str(array_file), "--out", str(tmp_path / "src"), "--epochs", "1", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["backbone"] == "graft_cnn"
    curve = ["curve", str(array_file), "--out", str(tmp_path / "c"), "--from", f"scratch,{tmp_path / 'src'}"]
    result = runner.invoke(app, [*curve, "--per-class", "3", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert {"points", "table", "verdicts", "summary", "judged_on"} <= set(answer) and len(answer["points"]) == 2
    result = runner.invoke(app, [*curve, "--per-class", "0,3", "--json"])
    assert result.exit_code != 0 and "--per-class takes whole numbers from 1" in json.loads(result.stdout)["error"]
