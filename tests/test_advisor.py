"""graft advise and --mode auto: size, scenario table, plans, determinism, the run records the advice."""

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

import graft
from graft.core.advisor import AdvisedPlan, advise, data_size, decide, sample_items
from graft.errors import ConfigError
from graft.image.data import scan_folder
from graft.image.probing import _ChannelMoments
from tests.conftest import SHARED_DATASETS, TINY_BACKBONE

STAGES = ["stem", "s0", "s1", "s2", "s3", "s4", "s5", "s6", "head_conv"]


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A weights file for the tiny random backbone (advise needs 'pretrained' weights; these stand in)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model(TINY_BACKBONE).state_dict().items()}, str(path))
    return str(path)


def _evidence(drift):
    return {
        "stages": STAGES,
        "sample_images": 40,
        "bn_drift": dict(zip(STAGES, drift)),
        "bn_drift_mean": float(np.mean(drift)),
        "logme": dict.fromkeys(STAGES, 0.0),
        "head_confidence": None,
        "head_entropy": None,
    }


CLOSE = [0.05] * 9
FAR_LATE = [0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.3, 0.3, 0.3]  # mean 0.13: far, drift only in the last three stages
FAR = [0.4] * 9


@pytest.mark.parametrize(
    "images,drift,scenario,mode",
    [(300, CLOSE, 1, "extract"), (5000, CLOSE, 2, "finetune"), (300, FAR, 3, "finetune"), (5000, FAR, 4, "finetune")],
)
def test_the_four_scenarios_follow_the_table(images, drift, scenario, mode):
    advice = decide("b", {"images": images, "classes": 2, "min_per_class": images // 2}, _evidence(drift), 0.1)
    assert advice.scenario == scenario and advice.plan.mode == mode
    assert 0 <= advice.similarity <= 1
    assert (advice.similarity >= 0.5) == (drift is CLOSE)


def test_plans_train_more_stages_as_data_grows_and_domains_part():
    size = {"classes": 2, "min_per_class": 10}
    unfreeze = {
        s: decide("b", {**size, "images": n}, _evidence(d), 0).plan.unfreeze
        for s, n, d in [(1, 300, CLOSE), (2, 5000, CLOSE), (3, 300, FAR), (4, 5000, FAR)]
    }
    assert unfreeze[1] == 0
    assert 2 <= unfreeze[2] <= 4  # freeze roughly 60-80% of 9 stages
    assert 3 <= unfreeze[3] <= 5  # freeze the first half to two-thirds
    assert unfreeze[4] == len(STAGES)
    assert (
        decide("b", {**size, "images": 5000}, _evidence(FAR), 0).plan.backbone_lr_mult
        > decide("b", {**size, "images": 300}, _evidence(FAR), 0).plan.backbone_lr_mult
    )


def test_the_drift_profile_picks_where_adaptation_starts():
    advice = decide("b", {"images": 300, "classes": 2, "min_per_class": 150}, _evidence(FAR_LATE), 0)
    assert advice.scenario == 3
    assert advice.plan.unfreeze == 3  # the three drifting stages, inside the allowed 3-5
    assert "from s5 to the end" in " ".join(advice.reasons)


def test_plan_round_trips_and_rejects_unknown_keys():
    plan = AdvisedPlan("finetune", 3, 1e-3, 0.1, 10, 2, "train")
    assert AdvisedPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan
    with pytest.raises(ConfigError, match="unknown keys"):
        AdvisedPlan.from_dict({**plan.to_dict(), "bogus": 1})


def test_kl_drift_is_zero_on_source_statistics_and_grows_with_shift():
    layer = torch.nn.BatchNorm2d(4).eval()
    layer.running_mean.fill_(1.0)
    layer.running_var.fill_(4.0)
    same, shifted = _ChannelMoments(layer), _ChannelMoments(layer)
    generator = torch.Generator().manual_seed(0)
    same.add(1.0 + 2.0 * torch.randn(64, 4, 8, 8, generator=generator))
    shifted.add(3.0 + 2.0 * torch.randn(64, 4, 8, 8, generator=generator))
    assert same.kl_to_source() < 0.01
    assert shifted.kl_to_source() == pytest.approx(0.5, abs=0.05)  # (3 - 1)^2 / (2 * 4)


def test_advise_measures_size_and_returns_the_documented_shape(class_folder, tiny_weights):
    advice = advise(class_folder, backbone=TINY_BACKBONE, weights=tiny_weights, per_class=4).to_dict()
    assert advice["size"] == {"images": 30, "classes": 3, "min_per_class": 10}
    assert advice["scenario"] in (1, 2, 3, 4) and 0 <= advice["similarity"] <= 1
    assert set(advice["plan"]) == {"mode", "unfreeze", "lr", "backbone_lr_mult", "epochs", "head_epochs", "bn"}
    assert advice["evidence"]["sample_images"] == 12
    assert set(advice["evidence"]["logme"]) == set(advice["evidence"]["stages"]) >= set(advice["evidence"]["bn_drift"])
    assert advice["evidence"]["head_confidence"] is not None
    json.dumps(advice)


def test_advice_is_deterministic_for_a_seed(class_folder, tiny_weights):
    runs = [
        advise(class_folder, backbone=TINY_BACKBONE, weights=tiny_weights, per_class=4, seed=seed).to_dict()
        for seed in (7, 7, 8)
    ]
    for run in runs:
        run.pop("seconds")
    assert runs[0] == runs[1]
    dataset = scan_folder(class_folder)
    assert sample_items(dataset, 7, 4) == sample_items(dataset, 7, 4) != sample_items(dataset, 8, 4)
    assert data_size(dataset)["images"] == 30


def test_train_auto_runs_the_advised_plan_and_records_it(class_folder, tiny_weights, tmp_path):
    summary = graft.train(
        class_folder,
        tmp_path / "run",
        mode="auto",
        backbone=TINY_BACKBONE,
        weights=tiny_weights,
        epochs=3,
        num_workers=0,
        quiet=True,
        batch_size=8,
    )
    advice = json.loads((tmp_path / "run" / "advice.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["advice"]["scenario"] == advice["scenario"] == summary["advice"]["scenario"]
    assert config["mode"] == advice["plan"]["mode"]
    expected_unfreeze = advice["plan"]["unfreeze"] if advice["plan"]["mode"] == "finetune" else 0
    assert summary["unfreeze"] == config["hyperparameters"]["unfreeze"] == expected_unfreeze
    assert config["hyperparameters"]["epochs"] == 3  # an explicit option wins over the advice
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    # the advised plan, trained as a fixed plan with the same seed, gives the same run: advising reuses the
    # scanned data and the loaded backbone and leaves the random state alone
    plan = advice["plan"]
    fixed = graft.train(
        class_folder,
        tmp_path / "fixed",
        mode=plan["mode"],
        unfreeze=plan["unfreeze"] or None,
        lr=plan["lr"],
        backbone_lr_mult=plan["backbone_lr_mult"],
        bn=plan["bn"],
        head_epochs=plan["head_epochs"],
        backbone=TINY_BACKBONE,
        weights=tiny_weights,
        epochs=3,
        num_workers=0,
        quiet=True,
        batch_size=8,
    )
    assert fixed["valid_accuracy"] == summary["valid_accuracy"]
    assert (tmp_path / "fixed" / "model.safetensors").read_bytes() == (
        tmp_path / "run" / "model.safetensors"
    ).read_bytes()


def test_multitask_auto_advises_on_the_first_classification_task_and_trains_its_plan(tmp_path, tiny_weights):
    from tests.conftest import make_image

    faces = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for i in range(36):
        age, gender = int(rng.integers(5, 80)), i % 2
        make_image(
            faces / f"{age}_{gender}_0_20170101{i:04d}.jpg.chip.jpg",
            (200 * gender + 20, 2 * age, 200 * (1 - gender)),
            seed=i,
            size=32,
        )
    summary = graft.train(
        faces,
        tmp_path / "run",
        labels="utkface",
        tasks="age,gender",
        mode="auto",
        backbone=TINY_BACKBONE,
        weights=tiny_weights,
        epochs=2,
        num_workers=0,
        quiet=True,
        batch_size=8,
        image_size=64,
    )
    advice = json.loads((tmp_path / "run" / "advice.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert advice["size"]["classes"] == 2 and advice["size"]["images"] == 36 - round(
        36 * 0.15
    )  # gender on train + valid
    assert (
        config["mode"] == advice["plan"]["mode"] == summary["mode"]
        and summary["advice"]["scenario"] == advice["scenario"]
    )
    assert set(summary["test"]["tasks"]) == {"age", "gender"}


def test_head_first_numbers_epochs_across_both_phases(class_folder, tmp_path):
    summary = graft.train(
        class_folder,
        tmp_path / "run",
        mode="finetune",
        unfreeze=2,
        head_epochs=1,
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=3,
        num_workers=0,
        quiet=True,
        batch_size=8,
    )
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [record["epoch"] for record in history] == [1, 2, 3]
    assert 1 <= summary["best_epoch"] <= 3 and summary["head_epochs"] == 1


def test_auto_refuses_from_scratch(class_folder, tmp_path):
    with pytest.raises(ConfigError, match="from-scratch"):
        graft.train(class_folder, tmp_path / "run", mode="auto", backbone=TINY_BACKBONE, pretrained=False, quiet=True)


@pytest.mark.weights
@pytest.mark.skipif(
    not (SHARED_DATASETS / "dogs-vs-cats-small").is_dir(), reason="shared datasets not present next to the repository"
)
def test_similarity_ranks_dogs_and_cats_closer_to_imagenet_than_hand_signs():
    dogs = advise(SHARED_DATASETS / "dogs-vs-cats-small", per_class=8)
    signs = advise(SHARED_DATASETS / "sign-language-digits", per_class=4)
    assert dogs.similarity > 0.5 > signs.similarity
    assert (dogs.scenario, signs.scenario) == (1, 4)  # 305 images vs 2012


def test_cli_advise_json_and_backbones_error(class_folder, tiny_weights):
    from typer.testing import CliRunner

    from graft.cli import app

    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "advise",
            str(class_folder),
            "--backbone",
            TINY_BACKBONE,
            "--weights",
            tiny_weights,
            "--per-class",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    advice = json.loads(result.stdout)
    assert {"scenario", "similarity", "size", "plan", "evidence"} <= set(advice)
    result = runner.invoke(app, ["advise", str(class_folder), "--per-class", "1"])
    assert result.exit_code == 2 and "--per-class" in result.output


def test_a_bad_per_class_is_refused_before_any_image_is_read(tmp_path):
    with pytest.raises(ConfigError, match="--per-class must be at least 2"):
        advise(tmp_path / "no such folder", per_class=1)  # the option is checked before the (slow) scan would fail
