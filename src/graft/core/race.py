"""``--mode auto`` on small data: choose the plan by a short, seeded race instead of by the table alone.

The advisor's table (:mod:`graft.core.advisor`) matched the best fixed plan on every full dataset, but
at 10-50 images a class it was 6-10 points below it (BENCHMARKS.md section 3): there the ranking of
plans changes with the data, and only trying tells. Trying is cheap there: the activation cache computes
the frozen stages once per image and depth for every candidate and fold.

The advice is the prior. The candidates are the advised plan, then feature extraction and the usual
fine-tuning depths (the last third, the last half) at a higher learning rate (tiny data gives few
optimizer steps); the prior's order breaks ties. The race is successive halving over folds: every
candidate trains on the first fold of the pooled training data (stratified) and is scored on the
fold's held-out part; the better half, and always the advised plan, go on to the next fold. The winner
follows the one-standard-error rule: the plan training the fewest stages whose held-out accuracy is
within one standard error of the best (on tiny data a lead of a few images is chance, and fewer
trained weights overfit less). Each training is the run's own (epochs, augmentation, cache, seed), so a score is
what the final run would see. A time budget stops the race early; what was measured then decides.

A deeper plan is not tried when a plan training fewer stages already left almost no held-out error on the
first fold (:data:`ROOM`): it could gain at most that error, and it costs several times as much (on the full
dogs-vs-cats, 305 images, the fine-tunes were 90% of the race's time and never won: BENCHMARKS.md section 11).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from graft.core.advisor import SMALL_DATA_IMAGES, Advice, AdvisedPlan
from graft.core.dataset import Dataset
from graft.core.strategies import default_unfreeze

__all__ = ["Race", "candidates", "folds", "race", "why_no_race"]

FOLDS = 3
RAISED_LR = 3.0  # the second learning rate tried: 3x the advised one
# Without --time-budget every plan runs on the first fold; after it the race starts no training once this
# many times the seconds of its first (the advised plan on the first fold, about what the final run costs)
# have passed, nor stops before MIN_SECONDS.
BUDGET_FACTOR = 3.0
MIN_SECONDS = 60.0
# A plan training more stages is not tried once one training fewer erred on at most this share of the first
# fold's held-out examples: auto promises to be within 2 points of the best plan, and no plan can beat another
# by more than the other's error.
ROOM = 0.02


def trained_stages(plan: AdvisedPlan) -> int:
    """How many backbone stages ``plan`` trains (0: feature extraction)."""
    return plan.unfreeze if plan.mode == "finetune" else 0


def describe(plan: AdvisedPlan) -> str:
    """A plan in a few words (the race's tables and messages)."""
    if plan.mode == "extract":
        return f"extract, lr {plan.lr:.0e}"
    return f"finetune last {plan.unfreeze}, lr {plan.lr:.0e}, backbone x{plan.backbone_lr_mult:g}"


def candidates(advice: Advice) -> list[AdvisedPlan]:
    """The plans to race, the advised one first; then feature extraction (at both rates: it costs
    seconds), and the fine-tuning depths around the advice, cheapest first, at the higher rate only (at
    the advised rate a depth other than the advised one never won on the small sets measured:
    BENCHMARKS.md section 11). Never the whole network, which the cache cannot help and small data
    rarely rewards."""
    advised = advice.plan
    stages = len(advice.evidence["stages"])
    multiplier = advised.backbone_lr_mult if advised.mode == "finetune" else 0.1
    raised = advised.lr * RAISED_LR

    def at(depth: int, lr: float) -> AdvisedPlan:
        if depth == 0:
            return AdvisedPlan("extract", 0, lr, 0.1, advised.epochs, 0, "frozen")
        return AdvisedPlan("finetune", depth, lr, multiplier, advised.epochs, 1, "train")

    depths = sorted({default_unfreeze(stages), math.ceil(stages / 2)} - {stages})
    plans = [advised]
    for plan in (at(0, raised), at(0, advised.lr), *(at(depth, raised) for depth in depths)):
        if plan not in plans:
            plans.append(plan)
    return plans


def why_no_race(advice: Advice) -> str | None:
    """Why the table's plan stands without a race (None: race)."""
    if advice.plan.mode not in ("extract", "finetune"):
        return f"the advised mode {advice.plan.mode} is not raced"
    if advice.size["images"] >= SMALL_DATA_IMAGES:
        return (
            f"{advice.size['images']} images is large data (the line is {SMALL_DATA_IMAGES}), where the table's plan "
            "matched the best fixed plan on every dataset measured (BENCHMARKS.md section 3)"
        )
    if advice.size["min_per_class"] < 2:
        return "a class has fewer than 2 images: no fold could hold one out"
    return None


def folds(dataset: Dataset, seed: int, count: int = FOLDS) -> list[Dataset]:
    """Stratified folds of the pooled train and valid splits: each a dataset whose ``valid`` is one part."""
    from sklearn.model_selection import StratifiedKFold

    pool = sorted(dataset.split("train") + dataset.split("valid"))
    labels = np.array([label for _, label in pool])
    count = min(count, int(np.bincount(labels).min()))
    splitter = StratifiedKFold(n_splits=count, shuffle=True, random_state=seed % 2**32)
    return [
        dataclasses.replace(
            dataset,
            splits={"train": [pool[i] for i in train], "valid": [pool[i] for i in valid]},
            skipped=[],
            warnings=[],
        )
        for train, valid in splitter.split(np.zeros(len(pool)), labels)
    ]


@dataclasses.dataclass
class Race:
    """Every candidate's scores per fold, the winner, and what the race cost."""

    plans: list[AdvisedPlan]
    scores: list[list[dict[str, float]]]  # per candidate, one entry per fold it ran: score, loss, seconds
    folds: int
    winner: int
    seconds: float
    stopped: str | None = None
    leader: int = 0  # the best measured; the winner unless a simpler plan is within one standard error of it
    counted: int = 0  # the folds every plan still in the race finished (a fold the budget cut short is not)
    skipped: dict[int, str] = dataclasses.field(default_factory=dict)  # plans never tried, and why

    def little_room_for(self, index: int) -> str | None:
        """Why plan ``index`` need not be tried (None: try it): a plan training fewer stages erred on at most
        :data:`ROOM` of the first fold's held-out examples."""
        simpler = [
            other
            for other, entries in enumerate(self.scores)
            if entries and trained_stages(self.plans[other]) < trained_stages(self.plans[index])
        ]
        if not simpler:
            return None
        best = max(simpler, key=lambda other: self.scores[other][0]["score"])
        error = 1.0 - self.scores[best][0]["score"]
        if error > ROOM:
            return None
        return (
            f"not tried: {describe(self.plans[best])} erred on {error:.1%} of the first fold's held-out examples, "
            f"so a plan training more stages could gain at most that (the line is {ROOM:.0%})"
        )

    def compared(self, index: int) -> list[dict[str, float]]:
        return self.scores[index][: self.counted]

    def key(self, index: int) -> tuple:
        """Plans rank by: the most folds compared, the best mean score, the lowest mean loss, the prior's order."""
        entries = self.compared(index)
        return (
            -len(entries),
            -np.mean([e["score"] for e in entries]) if entries else 0.0,
            np.mean([e["loss"] for e in entries]) if entries else 0.0,
            index,
        )

    def mean(self, index: int) -> float:
        entries = self.compared(index)
        return float(np.mean([entry["score"] for entry in entries])) if entries else math.nan

    def _pooled(self, index: int, folds: int) -> tuple[float, int]:
        entries = self.compared(index)[:folds]
        count = sum(entry.get("n", 1) for entry in entries)
        return sum(entry["score"] * entry.get("n", 1) for entry in entries) / max(1, count), count

    def lead(self, index: int, over: int = 0) -> float:
        """How far ``index``'s held-out accuracy is above ``over``'s (default: the advised plan), on the folds
        ``index`` ran."""
        folds = len(self.compared(index))
        return self._pooled(index, folds)[0] - self._pooled(over, folds)[0]

    def noise(self, index: int, over: int = 0) -> float:
        """One standard error of that difference, sqrt((p1(1-p1) + p0(1-p0)) / n) for n held-out examples, with
        each accuracy smoothed to (k+1)/(n+2): a perfect score on 30 images is not a certainty."""
        folds = len(self.compared(index))
        (mine, count), (theirs, _) = self._pooled(index, folds), self._pooled(over, folds)
        mine, theirs = ((p * count + 1) / (count + 2) for p in (mine, theirs))
        return math.sqrt((mine * (1 - mine) + theirs * (1 - theirs)) / max(1, count))

    def simplest_close_to(self, leader: int) -> int:
        """The one-standard-error rule (Breiman et al.'s CART; glmnet's lambda.1se): of the plans compared on
        as many folds as ``leader``, the one training the fewest stages (then the prior's order) whose score
        is within one standard error of the leader's."""
        folds = len(self.compared(leader))
        close = [
            index
            for index in range(len(self.plans))
            if len(self.compared(index)) == folds and self.lead(leader, index) <= self.noise(leader, index)
        ]
        return min(close, key=lambda index: (trained_stages(self.plans[index]), index))

    def to_dict(self) -> dict[str, Any]:
        return {
            "folds": self.folds,
            "winner": self.winner,
            "leader": self.leader,
            "folds_compared": self.counted,
            "seconds": round(self.seconds, 3),
            "stopped": self.stopped,
            "candidates": [
                {
                    "plan": plan.to_dict(),
                    "label": describe(plan),
                    "fold_scores": [round(entry["score"], 4) for entry in self.scores[index]],
                    "mean_score": None if not self.compared(index) else round(self.mean(index), 4),
                    "seconds": round(sum(entry["seconds"] for entry in self.scores[index]), 3),
                    "skipped": self.skipped.get(index),
                }
                for index, plan in enumerate(self.plans)
            ],
        }

    def reason(self) -> str:
        won = self.plans[self.winner]
        runs = len(self.compared(self.winner))
        text = (
            f"race of {len(self.plans)} plans over {self.folds} folds of the training data ({self.seconds:.0f}s, "
            f"successive halving): {describe(won)} won with mean held-out accuracy {self.mean(self.winner):.3f} "
            f"over {runs} fold(s)"
        )
        if self.winner != self.leader:
            text += (
                f"; {describe(self.plans[self.leader])} scored {self.mean(self.leader):.3f}, within one standard "
                f"error ({self.noise(self.leader, self.winner):.3f}) of it, and trains more: on so few held-out "
                "examples the simpler plan is the better bet"
            )
        if self.winner != 0:
            text += f"; the advised plan ({describe(self.plans[0])}) scored {self.mean(0):.3f}"
        if self.skipped:
            text += f"; {len(self.skipped)} deeper plan(s) {next(iter(self.skipped.values()))}"
        return text + (f"; {self.stopped}" if self.stopped else "")


def rows(recorded: dict[str, Any]) -> list[dict[str, str]]:
    """A recorded race (:meth:`Race.to_dict`) as table rows, for the console and the report."""
    return [
        {
            "plan": ("winner: " if index == recorded["winner"] else "") + entry["label"],
            "held-out accuracy per fold": " ".join(f"{score:.3f}" for score in entry["fold_scores"])
            or ("not tried: little room left" if entry.get("skipped") else "not run"),
            "mean": "" if entry["mean_score"] is None else f"{entry['mean_score']:.3f}",
            "seconds": f"{entry['seconds']:.1f}",
        }
        for index, entry in enumerate(recorded["candidates"])
    ]


def race(
    plans: Sequence[AdvisedPlan],
    fold_data: Sequence[Dataset],
    train_one: Callable[[AdvisedPlan, Dataset], dict[str, float]],
    *,
    budget: float | None = None,
    advance: Callable[[int], None] = lambda count: None,
) -> Race:
    """Successive halving of ``plans`` (prior order; the first is the advised plan, which runs on every
    fold) over ``fold_data``. ``train_one(plan, fold)`` trains on the fold's train split and returns
    ``score`` (held-out accuracy), ``loss``, ``seconds`` and ``n`` (held-out examples). The winner is the
    simplest plan within one standard error of the best measured (:meth:`Race.simplest_close_to`).
    ``budget``: seconds after which no new training starts (None: every plan runs on the first fold, then
    :data:`BUDGET_FACTOR` times the first training's seconds, at least :data:`MIN_SECONDS`, bound the rest)."""
    began = time.perf_counter()
    result = Race(list(plans), [[] for _ in plans], len(fold_data), 0, 0.0)
    alive = list(range(len(plans)))
    given = budget is not None
    for number, fold in enumerate(fold_data):
        for index in alive:
            if budget is not None and (given or number > 0) and time.perf_counter() - began >= budget:
                result.stopped = f"the race's time budget of {budget:.0f}s ran out on fold {number + 1}" + (
                    ""
                    if given
                    else f" (after the first fold, {BUDGET_FACTOR:g}x its first training; --time-budget sets it)"
                )
                break
            if number == 0 and (why := result.little_room_for(index)) is not None:
                result.skipped[index] = why
                advance(1)
                continue
            result.scores[index].append(train_one(plans[index], fold))
            advance(1)
            if budget is None:  # the default: relative to what the advised plan costs here
                budget = max(MIN_SECONDS, BUDGET_FACTOR * (time.perf_counter() - began))
        if result.stopped:
            result.counted = max(1, number)  # a cut first fold still tells something; a later one is dropped
            break
        result.counted = number + 1
        alive = [index for index in alive if index not in result.skipped]
        kept = sorted(alive, key=result.key)[: max(1, math.ceil(len(alive) / 2))]
        alive = sorted({0, *kept})  # the advised plan always runs on: every challenger is compared with it
        if len(alive) == 1:
            break
    result.leader = min(range(len(plans)), key=result.key)
    result.winner = result.simplest_close_to(result.leader)
    result.seconds = time.perf_counter() - began
    return result


def trainings(candidates_count: int, fold_count: int) -> int:
    """The most trainings the race runs without a budget (for the progress bar): the better half of the
    plans and the advised one go on after each fold."""
    total, alive = 0, candidates_count
    for _ in range(fold_count):
        total += alive
        alive = min(alive, math.ceil(alive / 2) + 1)
        if alive == 1:
            break
    return total
