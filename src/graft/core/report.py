"""A self-contained HTML report of a run: what was trained, how, and how well (plots inlined)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any


def _image(path: Path) -> str:
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _gallery(mistakes: list[dict[str, Any]], thumbnails: dict[str, str]) -> str:
    """fastai's ``plot_top_losses``: the examples the model got most wrong, with their images."""
    if not mistakes:
        return "<p>No mistakes on this split.</p>"
    cells = []
    for entry in mistakes:
        picture = thumbnails.get(entry["file"])
        image = f'<img alt="" src="{picture}" style="height:96px">' if picture else ""
        probabilities = f"{entry['prob_predicted']:.0%}; true {entry['prob_true']:.0%}"
        caption = (
            f"true <b>{html.escape(entry['true'])}</b>, predicted <b>{html.escape(entry['predicted'])}</b> "
            f"({probabilities})<br><small>{html.escape(entry['file'])}</small>"
        )
        style = "display:inline-block;width:210px;margin:6px;vertical-align:top"
        cells.append(f'<figure style="{style}">{image}<figcaption>{caption}</figcaption></figure>')
    return "".join(cells)


def _adaptation(run_path: Path, adaptation: dict | None, target: dict) -> str:
    """Domain adaptation's section: the method, whether the domains moved together (proxy A-distance,
    the picture), the target's label-free scores and, with ``--method auto``, every candidate."""
    if not adaptation:
        return ""
    distance = adaptation["proxy_a_distance"]
    rows = [
        {"what": "method", "value": f"{adaptation['method']} ({adaptation['summary']})"},
        {"what": "strength", "value": _fmt(adaptation["strength"])},
        {"what": "BatchNorm statistics", "value": adaptation["normalisation"]},
        {
            "what": "proxy A-distance (0: domains indistinguishable, 2: always told apart)",
            "value": f"{distance['before']:.2f} before, {distance['after']:.2f} after",
        },
        *[
            {"what": f"target {name} (no labels needed)", "value": _fmt(value)}
            for name, value in target.get("unsupervised", {}).items()
        ],
    ]
    auto = adaptation.get("auto")
    candidates = (
        f"<h3>--method auto: the candidates (chosen: {html.escape(auto['chosen'])})</h3>"
        f"<p>{html.escape(auto['rule'])}. Target accuracy, where shown, was read from the target's class "
        "folders for this report only.</p>" + _table(auto["candidates"])
        if auto
        else ""
    )
    return (
        "<h2>Domain adaptation</h2>"
        + _table(rows)
        + candidates
        + "<h3>Source and target features, before and after</h3>"
        + _image(run_path / adaptation["picture"])
    )


def _auto(advice: dict | None) -> str:
    """How ``--mode auto`` chose: the advisor's scenario and, on small data, the race of plans."""
    if not advice:
        return ""
    race = advice.get("race") or {}
    text = (
        f"<h2>How --mode auto chose</h2><p>Scenario {advice['scenario']}, similarity {advice['similarity']:.2f} "
        f"(details in {html.escape(advice['file'])}).</p>"
    )
    if "skipped" in race:
        return text + f"<p>No race: {html.escape(race['skipped'])}.</p>"
    if not race.get("candidates"):
        return text
    from graft.core.race import rows

    return (
        text
        + f"<p>A race over {race['folds']} folds of the training data ({race['seconds']:.0f}s; successive halving: "
        "the better half of the plans goes on to the next fold).</p>" + _table(rows(race))
    )


def render(
    run_path: Path,
    config: dict,
    plan_rows: list[dict],
    history: list[dict],
    metrics: dict,
    thumbnails: dict[str, str] | None = None,
) -> str:
    """The report of a finished run of any kind: what was trained on what with which options, the scores,
    the freeze plan, the learning curve, one classifier's per-class table and worst mistakes (with
    ``thumbnails``: data URIs by file), or every task's scores and confusion matrices."""
    tasks = config.get("multitask", {}).get("tasks")
    summary = [
        {"what": "backbone", "value": f"{config['backbone']['name']} ({config['backbone']['load_report']['source']})"},
        {"what": "mode", "value": config["mode"]},
        {
            "what": "tasks" if tasks else "classes",
            "value": ", ".join(t["name"] for t in tasks) if tasks else ", ".join(config["classes"]),
        },
        {
            "what": "images (train / valid / test)",
            "value": " / ".join(str(config["data"]["counts"].get(s, 0)) for s in ("train", "valid", "test")),
        },
        {"what": "skipped files", "value": str(config["data"]["skipped"])},
        {"what": "best epoch", "value": f"{metrics.get('best_epoch', '')} ({metrics.get('stopped', '')})"},
        {"what": "data", "value": str(config["data"].get("root") or "")},
        {"what": "created", "value": str(config.get("created", ""))},
        {"what": "graft", "value": str(config.get("graft_version", ""))},
    ]
    if metrics.get("head_refit"):  # the head refit to convergence after the loop
        summary.append({"what": "head refit", "value": refit_summary(metrics["head_refit"])})
    if metrics.get("greedy"):  # greedy layer-wise pre-training: the network after each stage
        stages = ", ".join(f"{r['stage']} {r['valid_accuracy']:.3f}" for r in metrics["greedy"])
        summary.append({"what": "greedy layer-wise (valid accuracy after each stage)", "value": stages})
    options = [
        {"section": section, "option": name, "value": json.dumps(value)}
        for section, entries in config.get("options", {}).items()
        for name, value in entries.items()
        if value is not None
    ]
    mistakes = ""
    final = "test" if "test" in metrics else "valid"
    if tasks:
        scores = [
            {"split": split, "task": name, **{k: v for k, v in entry.items() if isinstance(v, (int, float))}}
            for split in ("valid", "test")
            if split in metrics
            for name, entry in metrics[split]["tasks"].items()
        ]
        per_class = [
            {"task": task["name"], "class": name, **values}
            for task in tasks
            for name, values in metrics[final]["tasks"][task["name"]].get("per_class", {}).items()
        ]
        confusion = "".join(_image(run_path / f"confusion_matrix_{task['name']}.png") for task in tasks)
    else:
        scores = [
            {"split": split, "accuracy": m["accuracy"], "loss": m["loss"], "n": m["n"]}
            for split, m in metrics.items()
            if isinstance(m, dict) and "accuracy" in m
        ]
        per_class = [{"class": name, **values} for name, values in metrics.get(final, {}).get("per_class", {}).items()]
        confusion = _image(run_path / "confusion_matrix.png")
        mistakes = f"<h2>Worst mistakes ({final})</h2>" + _gallery(
            metrics.get(final, {}).get("worst", []), thumbnails or {}
        )
    rows = [{k: v for k, v in record.items() if not isinstance(v, dict)} for record in history]
    chosen = _auto(config.get("advice"))
    adaptation = _adaptation(run_path, metrics.get("adaptation"), metrics.get("target", {}))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>graft run {html.escape(run_path.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 10px;text-align:left}}th{{background:#f3f3f3}}img{{max-width:100%}}
</style></head><body>
<h1>graft run: {html.escape(run_path.name)}</h1>
{_table(summary)}
<h2>Scores</h2>{_table(scores)}
{chosen}
{adaptation}
<h2>Freeze plan</h2>{_table(plan_rows)}
<h2>Learning curve</h2>{_image(run_path / "learning_curve.png")}
<h2>Per class ({final})</h2>{_table(per_class)}
{confusion}
{mistakes}
<h2>History</h2>{_table(rows)}
<h2>Options</h2>{_table(options)}
</body></html>"""


def refit_summary(refit: dict[str, Any]) -> str:
    """What the head refit did, in a line; where it fitted the validation examples too, the loop's held-out
    validation score before it (the run's own valid scores are then not held out)."""
    line = f"on {refit['on']} ({refit['examples']} examples): {refit['note']}"
    if refit.get("loop_valid_score") is not None:
        line += f"; before it, the loop's head scored {refit['loop_valid_score']:.4f} on valid, held out"
    return line
