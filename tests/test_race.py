"""--mode auto's race of plans on small data: candidates, folds, successive halving, budget, the run's record."""

import json
import time

import pytest

import graft
from graft.core.advisor import AdvisedPlan, decide
from graft.core.race import candidates, folds, race, trainings, why_no_race
from graft.image.data import scan_folder
from tests.conftest import TINY_BACKBONE
from tests.test_advisor import FAR, _evidence, tiny_weights  # noqa: F401 (a fixture)

SMALL = {"images": 150, "classes": 10, "min_per_class": 15}


def test_candidates_start_with_the_advice_and_never_train_the_whole_network():
    advice = decide("b", SMALL, _evidence(FAR), 0.1)  # scenario 3: the last 5 of 9 stages
    plans = candidates(advice)
    assert plans[0] == advice.plan
    assert len(set(plans)) == len(plans) == 5
    assert {(p.mode, p.unfreeze) for p in plans} == {("finetune", 5), ("extract", 0), ("finetune", 3)}
    assert all(p.unfreeze < 9 for p in plans)
    assert [(p.mode, p.unfreeze, p.lr / advice.plan.lr) for p in plans[1:]] == [  # cheapest first
        ("extract", 0, 3.0),
        ("extract", 0, 1.0),
        ("finetune", 3, 3.0),
        ("finetune", 5, 3.0),
    ]


def test_only_small_data_is_raced():
    assert why_no_race(decide("b", SMALL, _evidence(FAR), 0.1)) is None
    large = decide("b", {"images": 5000, "classes": 10, "min_per_class": 500}, _evidence(FAR), 0.1)
    assert "large data" in why_no_race(large)
    lonely = decide("b", {**SMALL, "min_per_class": 1}, _evidence(FAR), 0.1)
    assert "fewer than 2" in why_no_race(lonely)


def test_folds_are_stratified_and_hold_out_every_image_once(class_folder):
    dataset = scan_folder(class_folder, valid_fraction=0.2, seed=0)
    parts = folds(dataset, seed=0)
    pool = sorted(dataset.split("train") + dataset.split("valid"))
    assert len(parts) == 3
    held_out = sorted(item for part in parts for item in part.split("valid"))
    assert held_out == pool
    for part in parts:
        assert sorted(part.split("train") + part.split("valid")) == pool
        assert sorted({label for _, label in part.split("valid")}) == [0, 1, 2]  # every class held out
    assert folds(dataset, seed=0)[0].splits == parts[0].splits != folds(dataset, seed=1)[0].splits


PLANS = [AdvisedPlan("finetune", k, 1e-3, 0.1, 10, 1, "train") for k in range(1, 7)]


def _scripted(scores: dict[int, list[float]], calls: list):
    def train_one(plan, fold):
        calls.append((plan.unfreeze, fold))
        return {"score": scores[plan.unfreeze][fold], "loss": 1.0, "seconds": 0.0, "n": 100}

    return train_one


def test_successive_halving_keeps_the_better_half_each_fold_and_picks_the_best_mean():
    # plan k's scores per fold; plan 6 leads after fold 0, plan 3 has the best mean over all three
    scores = {1: [0.1] * 3, 2: [0.2] * 3, 3: [0.6, 0.9, 0.9], 4: [0.5, 0.5, 0.5], 5: [0.3] * 3, 6: [0.9, 0.4, 0.4]}
    calls = []
    result = race(PLANS, [0, 1, 2], _scripted(scores, calls))
    assert [k for k, fold in calls if fold == 0] == [1, 2, 3, 4, 5, 6]
    assert [k for k, fold in calls if fold == 1] == [1, 3, 4, 6]  # the better half after fold 0, and the advice
    assert [k for k, fold in calls if fold == 2] == [1, 3, 6]
    assert len(calls) == trainings(6, 3) == 13
    assert PLANS[result.winner].unfreeze == 3
    recorded = result.to_dict()["candidates"]
    assert recorded[2]["fold_scores"] == [0.6, 0.9, 0.9] and recorded[1]["fold_scores"] == [0.2]


def test_ties_go_to_the_prior_order():
    calls = []
    result = race(PLANS[:2], [0, 1, 2], _scripted({1: [0.5] * 3, 2: [0.5] * 3}, calls))
    assert result.winner == 0 and len(calls) == 2  # one survivor after the first fold: no more folds


def test_a_lead_within_the_noise_of_few_held_out_examples_goes_to_the_simpler_plan():
    scores = {1: [0.8] * 3, 2: [0.85] * 3}

    def train_one(plan, fold):
        return {"score": scores[plan.unfreeze][fold], "loss": 1.0, "seconds": 0.0, "n": count}

    count = 10  # 30 held-out examples: a lead of 0.05 is half a standard error
    few = race(PLANS[:2], [0, 1, 2], train_one)
    assert few.leader == 1 and few.winner == 0 and "the simpler plan is the better bet" in few.reason()
    count = 100  # 300: the same lead is more than one
    many = race(PLANS[:2], [0, 1, 2], train_one)
    assert many.leader == many.winner == 1


def test_the_budget_stops_the_race_and_what_ran_decides():
    def slow(plan, fold):
        time.sleep(0.05)
        return {"score": plan.unfreeze / 10, "loss": 1.0, "seconds": 0.05, "n": 100}

    result = race(PLANS, [0, 1, 2], slow, budget=0.12)
    ran = [index for index, entries in enumerate(result.scores) if entries]
    assert ran == [0, 1, 2] and "time budget" in result.stopped
    assert result.winner == 2  # the best of the plans measured


def test_auto_on_small_data_races_records_it_and_trains_the_winner(class_folder, tiny_weights, tmp_path):  # noqa: F811
    summary = graft.train(
        class_folder,
        tmp_path / "run",
        mode="auto",
        backbone=TINY_BACKBONE,
        weights=tiny_weights,
        epochs=2,
        num_workers=0,
        quiet=True,
        batch_size=8,
    )
    advice = json.loads((tmp_path / "run" / "advice.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    entries = advice["race"]["candidates"]
    assert advice["race"]["folds"] == 3 and len(entries) >= 4
    winner = entries[advice["race"]["winner"]]
    assert winner["plan"] == advice["plan"] == config["advice"]["plan"] == summary["advice"]["plan"]
    leader = entries[advice["race"]["leader"]]
    assert leader["mean_score"] == max(e["mean_score"] for e in entries if len(e["fold_scores"]) == 3)
    stages = {index: 0 if e["plan"]["mode"] == "extract" else e["plan"]["unfreeze"] for index, e in enumerate(entries)}
    # the one-standard-error rule: the leader, or a plan training no more stages within noise of it
    assert (
        advice["race"]["winner"] == advice["race"]["leader"]
        or stages[advice["race"]["winner"]] <= stages[advice["race"]["leader"]]
    )
    assert len(entries[0]["fold_scores"]) == 3 and all(e["fold_scores"] for e in entries)
    assert config["mode"] == winner["plan"]["mode"] and config["hyperparameters"]["lr"] == winner["plan"]["lr"]
    assert summary["advice"]["race_seconds"] == pytest.approx(advice["race"]["seconds"])
    assert "floor" not in summary  # raced: extraction was one of the candidates already
    assert any("race of" in reason for reason in advice["reasons"])
    page = (tmp_path / "run" / "report.html").read_text()
    assert "How --mode auto chose" in page and "winner: " + winner["label"] in page


def test_without_a_budget_the_race_stops_at_a_multiple_of_its_first_training(monkeypatch):
    import graft.core.race as racing

    monkeypatch.setattr(racing, "MIN_SECONDS", 0.0)

    def timed(plan, fold):
        time.sleep(0.1 if plan.unfreeze == 1 else 0.02)  # the first (advised) plan takes 0.1 s
        return {"score": 0.5, "loss": 1.0, "seconds": 0.0}

    result = race(PLANS, [0, 1, 2], timed)
    runs = sum(len(entries) for entries in result.scores)
    assert 6 <= runs < trainings(6, 3)  # every plan on the first fold, then about 0.3 s in all
    assert "after the first fold, 3x its first training" in result.stopped


def test_a_fold_the_budget_cut_short_is_not_counted():
    def train_one(plan, fold):
        if fold == 1:
            time.sleep(0.2)  # the advised plan's second fold spends the budget: the challenger never runs it
        return {"score": {1: 0.5, 2: 0.9}[plan.unfreeze], "loss": 1.0, "seconds": 0.0, "n": 100}

    result = race(PLANS[:2], [0, 1, 2], train_one, budget=0.1)
    assert [len(entries) for entries in result.scores] == [2, 1] and result.counted == 1
    assert result.leader == result.winner == 1  # compared on the first fold, where both ran
    assert result.to_dict()["candidates"][0]["mean_score"] == 0.5


def test_a_perfect_score_on_few_examples_does_not_claim_zero_noise():
    def train_one(plan, fold):  # 29 of 30 for the advice, 30 of 30 for the challenger
        return {"score": {1: 29 / 30, 2: 1.0}[plan.unfreeze], "loss": 1.0, "seconds": 0.0, "n": 30}

    result = race(PLANS[:2], [0], train_one)
    assert result.leader == 1 and result.winner == 0 and result.noise(1) > result.lead(1)


def test_the_simplest_plan_within_one_standard_error_wins_not_only_the_advised_one():
    plans = [PLANS[4], PLANS[2], PLANS[0]]  # advised: the last 5 stages; then 3; then 1
    scores = {5: 0.70, 3: 0.80, 1: 0.78}  # the 3-stage plan leads; the 1-stage plan is within its noise

    def train_one(plan, fold):
        return {"score": scores[plan.unfreeze], "loss": 1.0, "seconds": 0.0, "n": 50}

    result = race(plans, [0], train_one)
    assert result.leader == 1 and result.winner == 2
    assert result.lead(1, 2) <= result.noise(1, 2) and result.lead(1, 0) > result.noise(1, 0)


def test_deeper_plans_are_not_tried_when_a_simpler_one_left_almost_no_error():
    extract = AdvisedPlan("extract", 0, 1e-3, 0.1, 10, 0, "frozen")
    plans = [extract, PLANS[2], PLANS[4]]  # feature extraction, then the last 3 and the last 5 stages

    def scripted(first_fold_score, finetuned=1.0):
        calls = []

        def train_one(plan, fold):
            calls.append((plan.mode, plan.unfreeze, fold))
            score = first_fold_score if plan.mode == "extract" else finetuned
            return {"score": score, "loss": 1.0, "seconds": 0.0, "n": 100}

        return calls, race(plans, [0, 1, 2], train_one)

    calls, result = scripted(0.99)  # 1 error in 100: a fine-tune could gain at most 1 point
    assert {mode for mode, _, _ in calls} == {"extract"} and result.winner == 0
    assert set(result.skipped) == {1, 2} and "erred on 1.0%" in result.skipped[1]
    recorded = result.to_dict()["candidates"]
    assert recorded[1]["fold_scores"] == [] and recorded[1]["skipped"]
    assert "not tried" in result.reason()
    calls, result = scripted(0.95, finetuned=0.97)  # 5 errors in 100, then 3: worth trying deeper
    assert ("finetune", 3, 0) in calls and ("finetune", 5, 0) in calls and not result.skipped
    calls, result = scripted(0.95, finetuned=1.0)  # the last 3 stages made no error: the last 5 cannot gain
    assert ("finetune", 3, 0) in calls and ("finetune", 5, 0) not in calls and set(result.skipped) == {2}


def test_auto_on_data_too_large_to_race_keeps_the_linear_probe_when_it_scores_higher(
    class_folder,
    tiny_weights,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """Large data trains the advised plan alone; the probe is its floor. Here the user's tiny learning rate
    cripples the fine-tune (what the user gives wins), while the probe trains at extraction's default rate."""
    import graft.core.race as racing

    monkeypatch.setattr(racing, "SMALL_DATA_IMAGES", 10)  # the generated folder counts as large: no race
    options = dict(backbone=TINY_BACKBONE, weights=tiny_weights, epochs=2, num_workers=0, quiet=True, batch_size=8)
    summary = graft.train(class_folder, tmp_path / "run", mode="auto", lr=1e-7, **options)
    floor = summary["floor"]
    assert json.loads((tmp_path / "run" / "advice.json").read_text())["race"].get("skipped")
    # kept when its best record ranks higher: accuracy, then validation loss
    assert floor["kept"] == "extract" and floor["extract_valid_score"] >= floor["plan_valid_score"]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["floor"] == floor and metrics["valid"]["accuracy"] == pytest.approx(floor["extract_valid_score"])
    loaded = graft.load(tmp_path / "run")  # the saved weights are the probe's
    assert graft.evaluate(loaded, class_folder)["accuracy"] >= floor["extract_valid_score"] - 0.2


def test_the_race_scores_an_extraction_candidate_after_the_head_refit_the_run_would_do(
    class_folder,
    tiny_weights,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    """Every extraction training in the race refits its head (as the run will), and its fold score is the
    refit model's validation accuracy, not the loop's."""
    import graft.core.classifier
    from graft.core.evaluation import collect_outputs
    from graft.core.head_refit import converge_head

    refits, accuracies = [], []

    def recorded(model, inputs, *args, **kwargs):
        record = converge_head(model, inputs, *args, **kwargs)
        outputs, labels = collect_outputs(model, inputs.evaluation["valid"], start=inputs.start)
        refits.append(record)
        accuracies.append(round(float((outputs.argmax(1) == labels).mean()), 4))
        return record

    monkeypatch.setattr(graft.core.classifier, "converge_head", recorded)
    options = dict(backbone=TINY_BACKBONE, weights=tiny_weights, num_workers=0, quiet=True, batch_size=8)
    graft.train(class_folder, tmp_path / "run", mode="auto", epochs=1, **options)
    entries = json.loads((tmp_path / "run" / "advice.json").read_text())["race"]["candidates"]
    extraction_trainings = sum(len(e["fold_scores"]) for e in entries if e["plan"]["mode"] == "extract")
    assert extraction_trainings >= 2
    race_refits = refits[:extraction_trainings]  # the run's own refit comes last, if it extracts
    assert len(refits) in (extraction_trainings, extraction_trainings + 1)
    assert any(record["kept"] != "loop" for record in race_refits)  # one epoch: a refit beats the loop's head
    scores = sorted(score for e in entries if e["plan"]["mode"] == "extract" for score in e["fold_scores"])
    assert scores == sorted(accuracies[:extraction_trainings])  # what the race compared: the refit heads
