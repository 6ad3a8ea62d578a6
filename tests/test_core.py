"""The modality-free core: one loop with objectives and callbacks, the runtime (device), and what it imports."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from graft.core.callbacks import Callback
from graft.core.config import RunConfig, validate
from graft.core.fit import fit
from graft.core.freeze import FreezePlan
from graft.core.model import TransferModel
from graft.core.objectives import Classification
from graft.core.runtime import Runtime, resolve_device, resolve_precision
from graft.errors import ConfigError


def test_importing_the_core_loads_no_image_library():
    """Every module of graft.core (found on disk, so a new one is covered too) imports without PIL,
    torchvision or timm: images reach the core only through the modality registry."""
    from pathlib import Path

    import graft.core

    modules = sorted(
        f"graft.core.{path.stem}" for path in Path(graft.core.__file__).parent.glob("*.py") if path.stem != "__init__"
    )
    assert len(modules) > 20
    code = (
        f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; "
        "print(','.join(m for m in ('PIL', 'torchvision', 'timm') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert loaded == "", f"graft.core imported {loaded}"


def test_a_device_that_is_not_there_or_not_a_device_is_refused_with_a_message():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="--device must be auto, cpu, cuda or cuda:N; got 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="sees no CUDA GPU") as raised:
            resolve_device("cuda:0")
        assert "--device cpu" in raised.value.hint


def test_precision_auto_is_fp32_on_a_cpu_and_bf16_autocasts_the_forward_pass_there_too():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"  # bf16 is emulated, slower, on most CPUs
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    layer, inputs = nn.Linear(4, 2), torch.randn(3, 4)
    for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        runtime = Runtime(precision=precision)
        with runtime.autocast():
            assert layer(inputs).dtype == dtype
        assert runtime.describe() == {"device": "cpu", "precision": precision, "processes": 1}
    with pytest.raises(
        ConfigError, match=r"--precision \(runtime.precision\) must be one of auto, fp32, bf16; got 'fp16'"
    ):
        validate(RunConfig(data="d", precision="fp16"))


def test_the_runtime_moves_nested_batches():
    runtime = Runtime(torch.device("meta"))
    batch = {"ids": torch.zeros(2, 3), "parts": [torch.ones(1), "label"]}
    moved = runtime.put(batch)
    assert (
        moved["ids"].device.type == "meta" and moved["parts"][0].device.type == "meta" and moved["parts"][1] == "label"
    )


def _tiny_model() -> TransferModel:
    torch.manual_seed(0)
    stages = {"a": nn.Sequential(nn.Linear(4, 8), nn.ReLU()), "b": nn.Sequential(nn.Linear(8, 8), nn.ReLU())}
    return TransferModel(stages, nn.Linear(8, 2), 8)


def _loader(seed=0, n=32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=generator)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=8)


class Recorder(Callback):
    def __init__(self):
        self.calls = []

    def before_fit(self, state, epochs):
        self.calls.append("before_fit")

    def before_epoch(self, state, batches):
        self.calls.append("before_epoch")

    def after_loss(self, state, loss):
        self.calls.append("after_loss")
        return loss * 0.0  # a callback may change the loss: here it stops all learning

    def after_batch(self, state, mean_loss):
        self.calls.append("after_batch")

    def after_epoch(self, state):
        self.calls.append("after_epoch")

    def after_fit(self, state):
        self.calls.append("after_fit")


def test_callbacks_see_every_step_and_after_loss_can_change_the_loss():
    model = _tiny_model()
    plan = FreezePlan(stages=("a", "b"), trainable_from=0, lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recorder = Recorder()
    state = fit(
        model,
        Classification(label_smoothing=0.0),
        plan,
        _loader(),
        _loader(1),
        epochs=2,
        weight_decay=0.0,
        callbacks=[recorder],
    )
    assert recorder.calls[0] == "before_fit" and recorder.calls[-1] == "after_fit"
    assert recorder.calls.count("before_epoch") == recorder.calls.count("after_epoch") == 2
    assert recorder.calls.count("after_loss") == recorder.calls.count("after_batch") == 8
    assert all(
        torch.equal(before[k], v) for k, v in model.state_dict().items()
    )  # zero loss, no weight decay: nothing moved
    assert [r["epoch"] for r in state.history] == [1, 2] and {
        "train_loss",
        "train_accuracy",
        "valid_loss",
        "valid_accuracy",
        "valid_score",
    } <= set(state.history[0])


def test_the_time_budget_stops_after_the_epoch_that_passes_it():
    model = _tiny_model()
    plan = FreezePlan(stages=("a", "b"), trainable_from=0, lr=1e-2)
    state = fit(model, Classification(), plan, _loader(), _loader(1), epochs=5, time_budget=0.0)
    assert len(state.history) == 1 and state.stopped.startswith("time budget")


def test_the_classification_objective_ranks_by_accuracy_then_loss():
    objective = Classification()
    logits = np.array([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]], dtype=np.float32)
    record = objective.validate(logits, np.array([0, 1, 1]), None)
    assert record["valid_accuracy"] == pytest.approx(2 / 3) and record["valid_score"] == record["valid_accuracy"]
    better_loss = {**record, "valid_loss": record["valid_loss"] - 0.1}
    assert objective.rank(better_loss) > objective.rank(record)


def test_log_tensorboard_writes_every_epochs_scalars_and_the_confusion_matrix(class_folder, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import graft
    from tests.conftest import TINY_BACKBONE

    graft.train(
        class_folder,
        tmp_path / "run",
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=3,
        num_workers=0,
        quiet=True,
        batch_size=8,
        log="tensorboard",
    )
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/accuracy", "valid/loss", "valid/accuracy", "lr"} <= set(tags["scalars"])
    assert [event.step for event in events.Scalars("valid/accuracy")] == [1, 2, 3]
    assert "confusion_matrix/valid" in tags["images"]


def test_the_package_has_no_import_cycle():
    """Module-level imports between graft's modules form no cycle (plug-ins are named by strings in the
    registries, so the core never imports a kind of run or a modality at import time)."""
    import ast
    from pathlib import Path

    import graft

    root = Path(graft.__file__).parent.parent
    modules = {}
    for path in (root / "graft").rglob("*.py"):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = path
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in targets if target in modules and target != name}
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in graph[name]:
            assert state.get(other) != 1, f"import cycle: {' -> '.join(path[path.index(other) :] + [other])}"
            if other not in state:
                visit(other, path + [other])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_agree_with_scikit_learn(seed):
    """graft computes its metrics with numpy (importing sklearn.metrics cost a second of every run's start-up);
    they must equal scikit-learn's, classes without examples or predictions included."""
    from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, precision_recall_fscore_support

    from graft.core.evaluation import classification_metrics

    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c", "d"]
    labels = rng.integers(0, 3, size=40)  # class "d" never occurs
    probabilities = rng.dirichlet(np.ones(4) * 0.5, size=40).astype(np.float32)
    probabilities[:, 3] *= 0.01  # and is (almost) never predicted
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    ours = classification_metrics(probabilities, labels, classes)
    predicted = probabilities.argmax(axis=1)
    indices = list(range(4))
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=indices, zero_division=0)
    assert ours["accuracy"] == pytest.approx(accuracy_score(labels, predicted))
    assert ours["macro_f1"] == pytest.approx(float(np.mean(f1)))
    assert ours["loss"] == pytest.approx(log_loss(labels, np.clip(probabilities, 1e-7, 1), labels=indices), rel=1e-5)
    assert ours["confusion_matrix"] == confusion_matrix(labels, predicted, labels=indices).tolist()
    for i, name in enumerate(classes):
        assert ours["per_class"][name] == pytest.approx(
            {"precision": precision[i], "recall": recall[i], "f1": f1[i], "support": support[i]}
        )


@pytest.mark.parametrize("classes", [2, 5])
@pytest.mark.parametrize("weighted", [False, True])
def test_the_head_refit_logistic_regression_is_scikit_learns_without_importing_it(classes, weighted):
    """graft's L-BFGS fit minimises scikit-learn's LogisticRegression objective (weighted, two classes or more):
    the same coefficients to the solvers' tolerance and the same predictions; and scikit-learn is not imported."""
    from sklearn.linear_model import LogisticRegression

    from graft.core.head_refit import fit_logistic

    rng = np.random.default_rng(classes)
    labels = rng.integers(0, classes, 300)
    features = rng.normal(size=(300, 40)) + np.eye(classes, 40)[labels] * 1.5
    weights = rng.uniform(0.2, 3.0, 300) if weighted else None
    labels = labels + 3  # labels are any integers: classes_ keeps them
    sample_weight = np.ones(300) if weights is None else weights

    def objective(coef, intercept, c):  # scikit-learn's, as its documentation states it
        z = features @ coef.T + intercept
        z = np.concatenate([np.zeros((300, 1)), z], axis=1) if classes == 2 else z
        z = z - z.max(1, keepdims=True)
        loss = np.log(np.exp(z).sum(1)) - z[np.arange(300), labels - 3]
        return (sample_weight * loss).sum() / sample_weight.sum() + (coef**2).sum() / (2 * c * sample_weight.sum())

    for c in (0.01, 1.0):
        ours = fit_logistic(features, labels, c, sample_weight=weights)
        theirs = LogisticRegression(C=c, max_iter=5000, tol=1e-8).fit(features, labels, sample_weight=weights)
        assert ours.classes_.tolist() == theirs.classes_.tolist() and ours.coef_.shape == theirs.coef_.shape
        best = objective(theirs.coef_, theirs.intercept_, c)
        assert objective(ours.coef_, ours.intercept_, c) == pytest.approx(best, rel=1e-4)  # scikit-learn's: 5e-6
        assert np.abs(ours.coef_ - theirs.coef_).max() < 0.02 * np.abs(theirs.coef_).max()
        z = features @ ours.coef_.T + ours.intercept_
        predicted = theirs.classes_[z.argmax(1) if classes > 2 else (z[:, 0] > 0).astype(int)]
        assert (predicted == theirs.predict(features)).mean() >= 0.99
    with pytest.raises(ValueError, match="at least 2 classes"):
        fit_logistic(features, np.zeros(300), 1.0)
    code = "import sys, graft.core.head_refit; print('sklearn' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
        == "False"
    )


def test_extract_on_small_data_refits_the_head_to_convergence_and_keeps_the_lower_validation_loss(
    class_folder, tmp_path
):
    """One epoch leaves the loop's head far from the optimum: the logistic-regression refit has the lower
    validation log-loss, is kept, and is what the run saved and evaluated; finetune runs are left as trained."""
    import graft
    from tests.conftest import TINY_BACKBONE

    options = dict(backbone=TINY_BACKBONE, pretrained=False, epochs=1, num_workers=0, quiet=True, batch_size=8)
    summary = graft.train(class_folder, tmp_path / "run", **options)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    refit = metrics["head_refit"]
    scores = refit["valid_log_loss"]
    assert set(scores) == {"0.01", "0.1", "1.0", "loop"}
    assert refit["kept"] != "loop" and scores[refit["kept"]] == min(scores.values())
    assert refit["on"] == "train" and refit["examples"] == 24  # 30 images less the 20% held out
    evaluated = graft.evaluate(tmp_path / "run")  # the saved head: the refit one
    assert evaluated["accuracy"] == pytest.approx(summary["valid_accuracy"])
    assert metrics["valid"]["loss"] == pytest.approx(scores[refit["kept"]], rel=1e-3)
    graft.train(class_folder, tmp_path / "tuned", mode="finetune", unfreeze=1, **options)
    assert "head_refit" not in json.loads((tmp_path / "tuned" / "metrics.json").read_text())
