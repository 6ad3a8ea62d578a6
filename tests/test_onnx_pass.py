"""The frozen pass on ONNX Runtime (graft.image.onnx_pass): used only behind the export's parity gate, exported
once and kept, refused with a reason (and the pass left on torch) when the graph fails the gate or does not
export, and giving the activations torch gives to the gate's tolerance in a real frozen pass."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from graft.core.onnx_graph import close_enough
from graft.image import onnx_pass
from graft.image.backbones import create_backbone
from graft.image.decoded import ImageDataset
from graft.image.frozen_pass import forward_batches, notes
from graft.image.model import build_transfer_model
from tests.conftest import TINY_BACKBONE, make_image


def _small_network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(1)).eval()


def test_the_exported_graph_is_used_only_after_the_gate_and_kept_for_the_next_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    network, examples = _small_network(), torch.randn(4, 3, 16, 16)
    chosen, note = onnx_pass.onnx_pass(network, examples, threads=1)
    if chosen is None:  # this CPU runs the tiny network faster on torch: what the rates say decided it
        assert note["why"] == "torch is faster on this CPU"
        monkeypatch.setattr(onnx_pass, "_rates", lambda *args: {"torch": 1.0, "onnxruntime": 2.0})
        chosen, note = onnx_pass.onnx_pass(network, examples, threads=1)
    assert chosen is not None and note["runtime"] == "onnxruntime"
    assert note["checked_on"] == 4 and note["max_abs_diff"] < 1e-5
    assert list((tmp_path / "onnx").glob("*.onnx")) == [chosen.path]
    others = torch.randn(3, 3, 16, 16)  # a batch of another size: the batch axis is dynamic
    with torch.no_grad():
        assert close_enough(chosen.run(others.numpy()), network(others).numpy())
    again, note = onnx_pass.onnx_pass(network, examples, threads=1, images=onnx_pass.REUSE_FROM_IMAGES)
    assert again.path == chosen.path and note["exported"] is False
    few, note = onnx_pass.onnx_pass(network, examples, threads=1, images=onnx_pass.REUSE_FROM_IMAGES - 1)
    assert few is None and "too few" in note["why"]
    with torch.no_grad():  # other weights are another file, never the stale one
        network[0].weight.add_(1.0)
    changed, _ = onnx_pass.onnx_pass(network, examples, threads=1)
    assert changed.path != chosen.path
    with torch.no_grad():
        network[0].weight.add_(1.0)  # not exported yet: a pass too small to pay for the export leaves it undone
    unexported, note = onnx_pass.onnx_pass(network, examples, threads=1, images=onnx_pass.EXPORT_FROM_IMAGES - 1)
    assert unexported is None and "too few" in note["why"] and len(list((tmp_path / "onnx").glob("*.onnx"))) == 2


def test_the_faster_runtime_runs_the_pass_measured_once_per_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    network, examples = _small_network(), torch.randn(4, 3, 16, 16)
    chosen, note = onnx_pass.onnx_pass(network, examples, threads=1)
    rates = note["images_per_second"]
    assert set(rates) == {"torch", "onnxruntime"} and all(rate > 0 for rate in rates.values())
    assert (chosen is not None) == (rates["onnxruntime"] > rates["torch"])
    memos = list((tmp_path / "onnx").glob("*-1t.json"))
    assert len(memos) == 1 and json.loads(memos[0].read_text()) == rates
    memos[0].write_text(json.dumps({"torch": 10.0, "onnxruntime": 5.0}))  # what this CPU measured before
    chosen, note = onnx_pass.onnx_pass(network, examples, threads=1)
    assert chosen is None and note["why"] == "torch is faster on this CPU"
    assert note["images_per_second"] == {"torch": 10.0, "onnxruntime": 5.0}
    memos[0].write_text(json.dumps({"torch": 5.0, "onnxruntime": 10.0}))
    chosen, note = onnx_pass.onnx_pass(network, examples, threads=1)
    assert chosen is not None and note["runtime"] == "onnxruntime"


def test_a_graph_that_fails_the_gate_or_the_export_leaves_the_pass_on_torch(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    network, examples = _small_network(), torch.randn(2, 3, 16, 16)
    monkeypatch.setattr(onnx_pass, "close_enough", lambda have, want: False)
    chosen, note = onnx_pass.onnx_pass(network, examples, threads=1)
    assert chosen is None and note["runtime"] == "torch" and "parity gate" in note["why"]
    monkeypatch.undo()
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "fresh"))

    def broken_export(*args, **kwargs):
        raise RuntimeError("unsupported operator")

    monkeypatch.setattr(onnx_pass, "torch_onnx", broken_export)
    chosen, note = onnx_pass.onnx_pass(network, examples, threads=1)
    assert chosen is None and "does not export" in note["why"]
    monkeypatch.setenv(onnx_pass.OPT_OUT, "torch")
    chosen, note = onnx_pass.onnx_pass(network, examples, threads=1)
    assert chosen is None and note == {"runtime": "torch", "why": "GRAFT_FROZEN_RUNTIME=torch"}


@pytest.mark.parametrize("workers", [0, 2])
def test_a_frozen_pass_on_onnx_runtime_gives_torchs_activations(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(onnx_pass, "EXPORT_FROM_IMAGES", 1)  # 12 images would not pay for it in a real run
    monkeypatch.setattr(onnx_pass, "_rates", lambda *args: {"torch": 1.0, "onnxruntime": 2.0})  # whatever is faster
    loaded = create_backbone(TINY_BACKBONE, pretrained=False)
    size = 64
    model = build_transfer_model(loaded.model, "linear", 3, input_size=size).eval()
    preprocessing = loaded.preprocessing.__class__(input_size=size)
    paths = [make_image(tmp_path / f"{i}.png", (40 * i % 255, 90, 200), seed=i, size=80) for i in range(12)]
    pixels = ImageDataset([(str(path), 0) for path in paths], preprocessing.eval_transform(normalize=False))
    rows = {}
    for runtime in ("torch", "onnxruntime"):
        monkeypatch.setenv(onnx_pass.OPT_OUT, runtime)
        for stop in (3, len(model.stages)):  # a feature map, and pooled features
            rows[runtime, stop] = np.concatenate(
                list(forward_batches(model, pixels, stop, preprocessing, workers=workers))
            )
            assert notes["runtime"]["runtime"] == runtime
    for stop in (3, len(model.stages)):
        assert rows["torch", stop].shape == rows["onnxruntime", stop].shape
        assert close_enough(rows["onnxruntime", stop], rows["torch", stop])
