"""graft export: an ONNX file that behaves like the run's model (the parity gate) and says what it is."""

import json

import numpy as np
import pytest

import graft
from tests.conftest import TINY_BACKBONE

onnxruntime = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

OPTIONS = dict(backbone=TINY_BACKBONE, pretrained=False, epochs=1, num_workers=0, quiet=True, batch_size=8, cache=False)


def test_an_exported_classifier_predicts_what_the_run_predicts_and_carries_its_metadata(split_folder, tmp_path):
    graft.train(split_folder, tmp_path / "run", **OPTIONS)
    result = graft.export(tmp_path / "run", tmp_path / "model.onnx")
    assert result["parity"]["passed"] and result["parity"]["top1_agreement"] == 1.0 and result["parity"]["n"] == 9
    model = onnx.load(str(tmp_path / "model.onnx"))
    metadata = {entry.key: entry.value for entry in model.metadata_props}
    assert json.loads(metadata["labels"]) == {"probabilities": ["blue", "green", "red"]}
    assert json.loads(metadata["preprocessing"])["input_size"] == 160 and metadata["graft_version"] == graft.__version__
    trained = graft.load(tmp_path / "run")
    images = sorted(str(p) for p in (split_folder / "test").rglob("*.png"))
    expected = np.array([[p["probs"][name] for name in trained.classes] for p in trained.predict(images)])
    from graft.core.inputs import make_loader

    batch = next(
        iter(
            make_loader(trained.modality.examples([(p, -1) for p in images], trained.preprocessing, augment=False), 64)
        )
    )[0]
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(["probabilities"], {"input": batch.numpy()})[0]
    assert np.allclose(got, expected, rtol=1e-3, atol=1e-5)
    # the export form: BatchNorm folded into the convolutions, no separate padding (int8 needs both)
    assert not {node.op_type for node in model.graph.node} & {"BatchNormalization", "Slice", "Pad"}


def test_a_multitask_run_exports_one_output_per_task(tmp_path):
    from tests.conftest import make_image

    faces = tmp_path / "faces"
    for i in range(24):
        make_image(
            faces / f"{20 + i}_{i % 2}_{i % 3}_2017010100{i:02d}.jpg.chip.jpg",
            (200 * (i % 2), 3 * i, 90),
            seed=i,
            size=32,
        )
    graft.train(faces, tmp_path / "run", labels="utkface", tasks="age,gender", image_size=64, **OPTIONS)
    result = graft.export(tmp_path / "run", tmp_path / "faces.onnx")
    assert result["outputs"] == ["age", "gender"] and result["parity"]["passed"]
    # int8 too: each task measured (accuracy, or a regression's mean absolute error), gated on the worst drop
    quantised = graft.export(tmp_path / "run", tmp_path / "faces-int8.onnx", int8=True, max_drop=100)["int8"]
    assert set(quantised["fp32"]["tasks"]) == {"age", "gender"} and "mae" in quantised["int8"]["tasks"]["age"]
    assert quantised["task_drop_points"].keys() == {"gender"}
    assert quantised["accuracy_drop_points"] == quantised["task_drop_points"]["gender"]


def test_an_export_that_does_not_match_is_refused_and_not_written(split_folder, tmp_path, monkeypatch):
    from graft.errors import GraftError

    graft.train(split_folder, tmp_path / "run", **OPTIONS)
    real = onnxruntime.InferenceSession

    class Drifting:
        def __init__(self, *args, **kwargs):
            self.session = real(*args, **kwargs)

        def run(self, names, feeds):
            return [output[:, ::-1].copy() if output.ndim == 2 else output for output in self.session.run(names, feeds)]

    monkeypatch.setattr(onnxruntime, "InferenceSession", Drifting)
    with pytest.raises(GraftError, match="does not match the run's model .* nothing was written"):
        graft.export(tmp_path / "run", tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_int8_is_measured_against_fp32_and_refused_above_the_allowed_drop(split_folder, tmp_path):
    from graft.errors import ConfigError, GraftError

    graft.train(split_folder, tmp_path / "run", **{**OPTIONS, "epochs": 2})
    allowed = graft.export(tmp_path / "run", tmp_path / "int8.onnx", int8=True, max_drop=100)
    figures = allowed["int8"]
    assert figures["n"] == 9 and figures["int8"]["bytes"] < figures["fp32"]["bytes"]
    assert figures["accuracy_drop_points"] == pytest.approx(
        100 * (figures["fp32"]["accuracy"] - figures["int8"]["accuracy"])
    )
    assert (tmp_path / "int8.onnx").stat().st_size == figures["int8"]["bytes"]
    if figures["accuracy_drop_points"] > 0:
        with pytest.raises(GraftError, match="int8 loses .* nothing was written"):
            graft.export(tmp_path / "run", tmp_path / "strict.onnx", int8=True, max_drop=0)
        assert not (tmp_path / "strict.onnx").exists()
    with pytest.raises(ConfigError, match="--max-drop"):
        graft.export(tmp_path / "run", tmp_path / "x.onnx", int8=True, max_drop=-1)
