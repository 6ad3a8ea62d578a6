"""Domain adaptation (graft adapt): the methods' terms, the run kind end to end on generated domains,
target labels never reaching training, --method auto's record, resume after kill -9, and refusals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import graft
from graft.adaptation.methods import METHODS, method_named
from graft.adaptation.methods.coral import coral_distance
from graft.adaptation.methods.dann import reverse_gradient
from graft.adaptation.methods.mcc import class_confusion
from graft.adaptation.validators import information_maximization, proxy_a_distance
from graft.core.config import ADAPTATION_METHODS
from graft.errors import ConfigError, DataError
from tests.conftest import TINY_BACKBONE, make_image
from tests.test_advisor import tiny_weights  # noqa: F401 (a fixture)

COLOURS = ((220, 30, 30), (30, 200, 40), (30, 40, 220))


@pytest.fixture
def domains(tmp_path):
    """A source (3 colour classes) and a target of the same classes, darker and with a colour cast."""
    source, target = tmp_path / "source", tmp_path / "target"
    for index, colour in enumerate(COLOURS):
        shifted = tuple(int(0.6 * c + 60 * (k == 2)) for k, c in enumerate(colour))
        for i in range(12):
            make_image(source / f"c{index}" / f"s{index}_{i:02d}.png", colour, seed=index * 100 + i)
            make_image(target / f"c{index}" / f"t{index}_{i:02d}.png", shifted, seed=5000 + index * 100 + i)
    return source, target


def _adapt(source, target, run, **options):
    defaults = dict(backbone=TINY_BACKBONE, pretrained=False, epochs=2, batch_size=8, num_workers=0, quiet=True)
    return graft.adapt(source, target, run, **{**defaults, **options})


def test_every_method_name_the_config_accepts_is_registered():
    for name in ADAPTATION_METHODS:
        if name != "auto":
            assert method_named(name).name == name
    assert set(METHODS.names()) <= set(ADAPTATION_METHODS)


def test_alignment_terms_measure_what_they_claim():
    confident = torch.eye(3).repeat(4, 1) * 20  # every row one class, all classes used
    confused = torch.zeros(12, 3)
    assert class_confusion(confident) < 0.01 < class_confusion(confused)
    features = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    assert coral_distance(features, features) == 0
    assert coral_distance(features, 3 * features) > 0
    x = torch.ones(3, requires_grad=True)
    reverse_gradient(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full((3,), -0.5))


def test_validators_tell_apart_what_they_should():
    rng = np.random.default_rng(0)
    same = proxy_a_distance(rng.normal(size=(300, 5)), rng.normal(size=(300, 5)))
    apart = proxy_a_distance(rng.normal(size=(300, 5)), rng.normal(loc=3, size=(300, 5)))
    assert same < 0.4 and apart > 1.8
    assert information_maximization(np.eye(3)[[0, 1, 2, 0, 1, 2]]) > information_maximization(np.full((6, 3), 1 / 3))


def test_adapt_writes_a_normal_run_that_evaluate_and_predict_use(domains, tmp_path):
    source, target = domains
    run = tmp_path / "run"
    summary = _adapt(source, target, run, method="adabn+mcc")
    assert summary["kind"] == "adaptation" and summary["method"] == "adabn+mcc"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["target"]["n"] == 36 and 0 <= metrics["target"]["accuracy"] <= 1
    assert set(metrics["adaptation"]["proxy_a_distance"]) == {"before", "after"}
    assert (run / "domains.png").stat().st_size > 10_000
    assert "Domain adaptation" in (run / "report.html").read_text()
    # the saved model carries the target's BatchNorm statistics: evaluating it on the target reproduces the run's figure
    evaluated = graft.evaluate(run, target)
    assert evaluated["accuracy"] == pytest.approx(metrics["target"]["accuracy"], abs=1.5 / 36)
    predictions = graft.predict(run, [str(target / "c0")])
    assert len(predictions) == 12 and all(p["label"] in ("c0", "c1", "c2") for p in predictions)


def test_target_labels_never_reach_training(domains, tmp_path, monkeypatch):
    """The same target examples with their labels permuted train exactly the same model and choice."""
    import graft.adaptation.run as adaptation_run
    from graft.adaptation.data import TARGET

    source, target = domains
    first = _adapt(source, target, tmp_path / "a", method="auto", deterministic=True)
    original = adaptation_run.with_target

    def permuted(dataset, location, modality):
        scanned = original(dataset, location, modality)
        scanned.splits[TARGET] = [(path, (label + 1) % 3) for path, label in scanned.splits[TARGET]]
        return scanned

    monkeypatch.setattr(adaptation_run, "with_target", permuted)
    second = _adapt(source, target, tmp_path / "b", method="auto", deterministic=True)
    assert first["method"] == second["method"]

    def trained(run):
        history = json.loads((run / "history.json").read_text())
        choice = json.loads((run / "adaptation_auto.json").read_text())
        for candidate in choice["candidates"]:
            candidate.pop("target_accuracy_reported")
        return (
            [{k: v for k, v in r.items() if k != "seconds"} for r in history],
            choice,
            # tensors, not bytes: safetensors writes the metadata's keys in no fixed order
            {name: tensor.tolist() for name, tensor in load_file(run / "model.safetensors").items()},
        )

    assert trained(tmp_path / "a") == trained(tmp_path / "b")
    accuracy = [json.loads((tmp_path / r / "metrics.json").read_text())["target"]["accuracy"] for r in ("a", "b")]
    assert accuracy[0] != accuracy[1]  # the labels did reach the report


def test_auto_records_each_candidate_and_keeps_one(domains, tmp_path):
    source, target = domains
    _adapt(source, target, tmp_path / "run")
    choice = json.loads((tmp_path / "run" / "adaptation_auto.json").read_text())
    names = [candidate["method"] for candidate in choice["candidates"]]
    assert names[:2] == ["source-only", "adabn"] and len(names) == 8
    assert choice["chosen"] in names
    assert all("target_im" in c and "source_valid_accuracy" in c for c in choice["candidates"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["adaptation"]["method"] == choice["chosen"]


def _command(source, target, run):
    return [sys.executable, "-m", "graft", "adapt", str(source), str(target), "--out", str(run),
            "--backbone", TINY_BACKBONE, "--from-scratch", "--method", "dann", "--epochs", "6", "--batch-size", "4",
            "--deterministic", "--workers", "0", "--seed", "2", "--json"]  # fmt: skip


def test_a_killed_adaptation_run_resumes_to_the_uninterrupted_result(domains, tmp_path):
    source, target = domains
    env = {**os.environ, "GRAFT_ALLOCATOR": "system"}
    reference = tmp_path / "reference"
    done = subprocess.run(_command(source, target, reference), env=env, capture_output=True)
    assert done.returncode == 0, done.stderr[-2000:]
    killed = tmp_path / "killed"
    process = subprocess.Popen(_command(source, target, killed), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            if len(json.loads((killed / "history.json").read_text())) >= 2:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = subprocess.run([sys.executable, "-m", "graft", "train", "--resume", str(killed), "--workers", "0"],
                             env=env, capture_output=True, text=True)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    def final(run):
        history = json.loads((run / "history.json").read_text())
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history], (
            run / "model.safetensors"
        ).read_bytes()

    assert final(killed) == final(reference)


def test_options_that_do_not_apply_are_refused(domains, tmp_path):
    source, target = domains
    with pytest.raises(ConfigError, match="--strength"):
        _adapt(source, target, tmp_path / "a", method="source-only", strength=1.0)
    with pytest.raises(ConfigError, match="only applies to domain adaptation"):
        graft.train(source, tmp_path / "b", method="mcc", quiet=True)
    with pytest.raises(ConfigError, match="needs the cache"):
        _adapt(source, target, tmp_path / "c", method="mcc", cache=False)
    with pytest.raises(ConfigError, match="does not apply to domain adaptation"):
        _adapt(source, target, tmp_path / "d", method="mcc", mode="fewshot")
    with pytest.raises(DataError, match="is the source folder"):
        _adapt(source, source, tmp_path / "e", method="mcc")
    with pytest.raises(DataError, match="does not exist"):
        _adapt(source, tmp_path / "nowhere", tmp_path / "f", method="mcc")


def test_unreadable_target_files_are_skipped_and_listed(domains, tmp_path):
    source, target = domains
    broken = target / "c1" / "broken.png"
    broken.write_bytes(b"not an image")
    (target / "loose").mkdir()
    shutil.copy(target / "c2" / "t2_00.png", target / "loose" / "x.png")  # not in a class folder: unlabelled
    _adapt(source, target, tmp_path / "run", method="coral", epochs=1)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert [entry["file"] for entry in manifest["skipped"]] == [str(broken)]
    assert manifest["counts"]["target"] == 37
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "accuracy" not in metrics["target"] and "im" in metrics["target"]["unsupervised"]


def test_importance_weights_undo_a_known_selection(tmp_path):
    """Sample drawn 9:1 from one half of a Gaussian world: the estimated weights favour the other half."""
    from graft.adaptation.importance import estimate

    rng = np.random.default_rng(0)
    world = rng.normal(size=(2000, 4))
    keep = rng.random(2000) < np.where(world[:, 0] > 0, 0.9, 0.1)
    sample, pool = world[keep], rng.normal(size=(1000, 4))
    for estimator in ("classifier", "kliep"):
        weights = estimate(sample, pool, sample[:50], estimator)
        assert weights.train.mean() == pytest.approx(1.0)
        under = weights.train[sample[:, 0] < 0].mean() / weights.train[sample[:, 0] > 0].mean()
        assert under > 2.5, (estimator, under)  # the true ratio is 9
        assert weights.effective_sample_size < len(sample)


def test_label_shift_weights_recover_how_often_each_class_was_drawn():
    """Three classes drawn 0.9 / 0.3 / 0.1 from a world where they are equally common: the pool's frequencies
    by EM, and weights proportional to 1 / the draw rate (1 : 3 : 9)."""
    from graft.adaptation.importance import estimate, pool_class_frequencies

    rng = np.random.default_rng(0)
    centres = np.eye(3, 5) * 3.0

    def world(n):
        labels = rng.integers(0, 3, n)
        return centres[labels] + rng.normal(size=(n, 5)), labels

    drawn, drawn_labels = world(3000)
    keep = rng.random(3000) < np.array([0.9, 0.3, 0.1])[drawn_labels]
    sample, labels = drawn[keep], drawn_labels[keep]
    pool, _ = world(1500)
    assert np.allclose(pool_class_frequencies(sample, labels, pool), 1 / 3, atol=0.04)
    weights = estimate(sample, pool, sample[:30], "labelshift", labels=labels, valid_labels=labels[:30])
    per_class = [weights.train[labels == c].mean() for c in range(3)]
    assert per_class[1] / per_class[0] == pytest.approx(3, rel=0.2)
    assert per_class[2] / per_class[0] == pytest.approx(9, rel=0.2)
    assert np.allclose(weights.valid, weights.train[:30])  # the same class, the same weight


def test_reweighted_training_writes_weights_and_a_normal_run(domains, tmp_path):
    source, target = domains
    run = tmp_path / "run"
    summary = graft.train(source, run, reweight=target, backbone=TINY_BACKBONE, pretrained=False, epochs=2,
                          batch_size=8, num_workers=0, quiet=True)  # fmt: skip
    assert summary["kind"] == "reweighted"
    weights = json.loads((run / "importance_weights.json").read_text())
    assert len(weights["train"]) == summary["importance"]["examples"] == 29  # 36 less the 20% held out
    assert np.mean(weights["train"]) == pytest.approx(1.0)
    history = json.loads((run / "history.json").read_text())
    assert "valid_weighted_accuracy" in history[0]
    assert graft.evaluate(run, target)["n"] == 36
    with pytest.raises(ConfigError, match="needs --reweight"):
        graft.train(source, tmp_path / "x", weight_estimator="kliep", quiet=True)
    options = dict(backbone=TINY_BACKBONE, pretrained=False, epochs=1, batch_size=8, num_workers=0, quiet=True)
    by_class = graft.train(source, tmp_path / "by-class", reweight=target, weight_estimator="labelshift", **options)
    weights = json.loads((tmp_path / "by-class" / "importance_weights.json").read_text())
    labels = [
        label for _, label in json.loads((tmp_path / "by-class" / "manifest.json").read_text())["splits"]["train"]
    ]
    uncorrected = graft.train(source, tmp_path / "none", reweight=target, weight_estimator="none", **options)
    assert uncorrected["importance"]["effective_sample_size"] == pytest.approx(29)  # every weight 1
    assert by_class["importance"]["estimator"] == "labelshift"
    assert all(  # one weight per class
        len({round(w, 9) for w, y in zip(weights["train"], labels) if y == c}) == 1 for c in set(labels)
    )


@pytest.fixture
def refit_fits(monkeypatch):
    """Every logistic regression the head refit fits, as ``(sample_weight, fitted)``, in order."""
    from graft.core import head_refit
    from graft.core.head_refit import fit_logistic

    fits = []

    def recorded(features, labels, c, sample_weight=None):
        fitted = fit_logistic(features, labels, c, sample_weight)
        fits.append((sample_weight, fitted))
        return fitted

    monkeypatch.setattr(head_refit, "fit_logistic", recorded)
    return fits


def test_reweighted_extract_run_refits_its_head_with_the_importance_weights(domains, tmp_path, refit_fits):
    """Extract mode, linear head: after the loop the head is refit to convergence with every example's weight
    (train and valid), and the saved head is that fit's."""
    source, target = domains
    run = tmp_path / "run"
    summary = graft.train(source, run, reweight=target, backbone=TINY_BACKBONE,
                          pretrained=False, epochs=1, batch_size=8, num_workers=0, quiet=True)  # fmt: skip
    refit = json.loads((run / "metrics.json").read_text())["head_refit"]
    assert refit["on"] == "train+valid" and refit["examples"] == 36 and summary["importance"]["examples"] == 29
    assert len(refit_fits) == 4  # three strengths tried on train, then the chosen one on train and valid
    scores = refit["valid_log_loss"]
    assert refit["kept"] == str(refit["regularisation_c"]) and scores[refit["kept"]] == min(scores.values())
    weights = json.loads((run / "importance_weights.json").read_text())
    last_weights, last_fit = refit_fits[-1]
    assert sorted(last_weights) == pytest.approx(sorted(weights["train"] + weights["valid"]))
    saved = load_file(run / "model.safetensors")
    head_weight = next(value for key, value in saved.items() if key.startswith("head.") and key.endswith("weight"))
    assert np.allclose(head_weight.numpy(), last_fit.coef_, atol=1e-5)


def test_label_shift_weights_shift_the_priors_in_the_logits_not_the_examples():
    """labelshift's loss is cross-entropy of the logits less each class's log-weight, every example counted
    once: the head's own logits are then the world's."""
    from graft.adaptation.reweighted import WeightedClassification

    outputs = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]])
    targets = torch.tensor([[0.0, 0.4], [2.0, 5.0]])  # [label, weight]
    objective = WeightedClassification(label_smoothing=0.0)
    weighted = objective.loss(outputs, targets, None)
    per_class = [0.5, 1.0, 4.0]
    objective.shift_priors(per_class)
    shifted = objective.loss(outputs, targets, None)
    expected = torch.nn.functional.cross_entropy(outputs - torch.log(torch.tensor(per_class)), targets[:, 0].long())
    assert shifted == pytest.approx(float(expected)) and shifted != pytest.approx(float(weighted))


def test_label_shift_run_refits_unweighted_and_shifts_the_head_biases(domains, tmp_path, refit_fits):
    """A sample with few examples of one class, a pool (the whole source) where all are equally common: the refit
    is fitted without example weights and the saved head's biases are its intercepts plus each class's log-weight."""
    source, _ = domains
    biased = tmp_path / "biased"
    for image in sorted(source.rglob("*.png")):
        if image.parent.name != "c2" or image.stem.endswith(("00", "01", "02", "03", "04")):
            (biased / image.parent.name).mkdir(parents=True, exist_ok=True)
            (biased / image.parent.name / image.name).write_bytes(image.read_bytes())
    run = tmp_path / "run"
    graft.train(biased, run, reweight=source, weight_estimator="labelshift", backbone=TINY_BACKBONE,
                pretrained=False, epochs=1, batch_size=8, num_workers=0, quiet=True)  # fmt: skip
    per_class = np.array(json.loads((run / "importance_weights.json").read_text())["summary"]["per_class"])
    assert per_class[2] > 1.5 * max(per_class[0], per_class[1])  # the rare class counts for more in the world
    assert all(weights is None or np.allclose(weights, 1.0) for weights, _ in refit_fits)
    refit = json.loads((run / "metrics.json").read_text())["head_refit"]
    assert refit["kept"] != "loop" and "priors shifted" in refit["note"]
    saved = load_file(run / "model.safetensors")
    head_bias = next(value for key, value in saved.items() if key.startswith("head.") and key.endswith("bias"))
    assert np.allclose(head_bias.numpy(), refit_fits[-1][1].intercept_ + np.log(per_class), atol=1e-5)


def test_advise_with_a_target_measures_how_far_apart_the_domains_are(domains, tmp_path, tiny_weights):  # noqa: F811
    from graft.adaptation.advice import advise_domains

    source, target = domains
    near = tmp_path / "near"  # the source's own classes and colours, other images: the same domain
    for index, colour in enumerate(COLOURS):
        for i in range(12):
            make_image(near / f"n{index}_{i:02d}.png", colour, seed=9000 + index * 100 + i)
    options = dict(backbone=TINY_BACKBONE, weights=tiny_weights, per_domain=24)
    far = advise_domains(source, target, **options)
    same = advise_domains(source, near, **options)
    assert far["distance"] > same["distance"] and far["distance"] == far["proxy_a_distance"][far["stages"][-1]]
    assert far["images"] == {"source": 24, "target": 24} and set(far["proxy_a_distance"]) == set(far["stages"])
    assert far["source_only"]["target_accuracy"] is not None  # class folders: reported, never used to measure
    assert same["source_only"]["target_accuracy"] is None  # no class folders: nothing to report
    assert far["verdict"] in ("apart", "far") and far["reason"]


def test_target_labels_change_only_the_reported_target_accuracy(domains, tmp_path, tiny_weights):  # noqa: F811
    from graft.adaptation.advice import advise_domains

    source, target = domains
    permuted = tmp_path / "permuted"
    for old, new in (("c0", "c1"), ("c1", "c2"), ("c2", "c0")):
        shutil.copytree(target / old, permuted / new)
    options = dict(backbone=TINY_BACKBONE, weights=tiny_weights, per_domain=24)
    first, second = advise_domains(source, target, **options), advise_domains(source, permuted, **options)
    for found in (first, second):
        found.pop("seconds"), found.pop("target")
    assert first["source_only"].pop("target_accuracy") != second["source_only"].pop("target_accuracy")
    assert first == second


def test_the_domain_verdict_follows_the_measured_lines():
    from graft.adaptation.advice import CLOSE, FAR, verdict

    assert verdict(0.1, 0.01)[0] == "close"
    assert verdict(0.1, 0.3)[0] == "apart"  # close by distance, but the source classifier is unsure there
    assert verdict((CLOSE + FAR) / 2, None)[0] == "apart"
    kind, sentence = verdict(1.8, 0.3)
    assert kind == "far" and "graft adapt" in sentence and "1.80" in sentence


def test_advise_target_refuses_options_that_do_not_apply(domains, tiny_weights):  # noqa: F811
    from typer.testing import CliRunner

    from graft.cli import app

    source, target = domains
    runner = CliRunner()
    common = ["advise", str(source), "--backbone", TINY_BACKBONE, "--weights", tiny_weights]
    result = runner.invoke(app, [*common, "--target", str(target), "--per-class", "3"])
    assert result.exit_code == 2 and "--per-class does not apply with --target" in result.output
    result = runner.invoke(app, [*common, "--per-domain", "20"])
    assert result.exit_code == 2 and "--per-domain only applies with --target" in result.output
    result = runner.invoke(app, [*common, "--target", str(target), "--per-domain", "4"])
    assert result.exit_code == 2 and "--per-domain must be at least 8" in result.output
    result = runner.invoke(app, [*common, "--target", str(target), "--per-domain", "24", "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.stdout)
    assert {"proxy_a_distance", "distance", "source_only", "verdict", "reason", "similarity_to_pretraining"} <= set(
        found
    )


def test_the_target_folder_is_checked_once_then_remembered_like_a_training_folder(domains, monkeypatch):
    from graft.adaptation.data import scan_target
    from graft.core.modality import modality_for
    from graft.image import checking

    source, target = domains
    inspected = []
    real = checking.inspect_image
    monkeypatch.setattr(checking, "inspect_image", lambda path, *a, **k: inspected.append(path) or real(path, *a, **k))
    modality = modality_for(str(source), TINY_BACKBONE)
    first, _ = scan_target(str(target), ["c0", "c1", "c2"], modality)
    assert len(inspected) == len(first) == 36
    inspected.clear()
    again, _ = scan_target(str(target), ["c0", "c1", "c2"], modality)
    assert inspected == [] and again == first
