"""Text as a second modality: tables and folders of labelled texts (what is skipped, warned about and
named by line), the encoder cut into stages (cached rows at a freeze boundary give what the whole
network gives), and train / predict / evaluate / resume through the same pipeline as images, with a
tiny random BERT (and, in two tests, the real all-MiniLM-L6-v2 shipped in a pip package)."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import graft
from graft.errors import ConfigError, DataError
from graft.text.data import normalised, scan_texts
from graft.text.encoders import load_encoder, location
from graft.text.model import wrap_encoder

WORDS = {
    "sport": ["match", "goal", "team", "score", "coach", "league", "striker", "referee"],
    "food": ["recipe", "oven", "flour", "garlic", "simmer", "butter", "salad", "spice"],
}


def write_table(path: Path, rows, header=("text", "label"), delimiter=",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def generated_rows(per_class: int = 30, seed: int = 0) -> list[tuple[str, str]]:
    """Sentences made of each class's own words: learnable from token identity alone."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, words in WORDS.items():
        for i in range(per_class):
            chosen = rng.choice(words, size=int(rng.integers(3, 7)))
            rows.append((f"the {' '.join(chosen)} number {i}", label))
    return rows


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> str:
    """A 2-layer, 16-wide random BERT with all-MiniLM-L6-v2's tokenizer, saved as a local model folder."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(
        vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    source = Path(location("all-MiniLM-L6-v2"))
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return str(folder)


@pytest.fixture
def text_table(tmp_path) -> Path:
    return write_table(tmp_path / "texts.csv", generated_rows())


def test_a_table_is_read_with_every_unusable_record_named_by_line(tmp_path):
    path = tmp_path / "t.csv"
    lines = [b"text,label", b"good one,a", b",a", b"no label here,", b"\xff\xfe broken,b", b"too,many,fields"]
    lines += [f"text {i},{'ab'[i % 2]}".encode() for i in range(10)]
    lines += [b'"an unbalanced quote', *[b"swallows, lines"] * 11, b'here",a']
    path.write_bytes(b"\n".join(lines) + b"\n")
    dataset = scan_texts(path, valid_fraction=0.2, seed=0)
    reasons = {entry["file"]: entry["reason"] for entry in dataset.skipped}
    assert reasons[f"{path}:3"] == "empty text"
    assert reasons[f"{path}:4"] == "no label"
    assert reasons[f"{path}:5"].startswith("not UTF-8 text (byte 0xff at column 1)")
    assert reasons[f"{path}:6"] == "3 fields where the header has 2"
    assert sum(len(items) for items in dataset.splits.values()) == 12
    assert dataset.classes == ["a", "b"]
    assert {
        "file": f"{path}:17",
        "message": "one record spans 13 lines: an unbalanced quote may have merged several records",
    } in dataset.warnings


def test_other_columns_tsv_jsonl_and_class_folders(tmp_path):
    tsv = write_table(tmp_path / "t.tsv", generated_rows(5), header=("body", "kind"), delimiter="\t")
    with pytest.raises(DataError, match="no column 'text'.*'body'"):
        scan_texts(tsv, valid_fraction=0.2, seed=0)
    assert scan_texts(tsv, valid_fraction=0.2, seed=0, text_column="body", label_column="kind").classes == [
        "food",
        "sport",
    ]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"text": t, "label": label}) for t, label in generated_rows(5)) + "\n{broken\n",
        encoding="utf-8",
    )
    dataset = scan_texts(jsonl, valid_fraction=0.2, seed=0)
    assert dataset.skipped == [
        {"file": f"{jsonl}:11", "reason": "not JSON (Expecting property name enclosed in double quotes at column 2)"}
    ]
    for i, (text, label) in enumerate(generated_rows(5)):
        (tmp_path / "folders" / label).mkdir(parents=True, exist_ok=True)
        (tmp_path / "folders" / label / f"{i}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "folders" / "food" / "photo.jpg").write_bytes(b"x")
    dataset = scan_texts(tmp_path / "folders", valid_fraction=0.2, seed=0)
    assert sum(len(items) for items in dataset.splits.values()) == 10
    assert [entry["reason"] for entry in dataset.skipped] == ["not a .txt file (.jpg)"]


def test_duplicates_stay_on_one_side_of_a_split_and_are_warned_about_across_given_splits(tmp_path):
    rows = generated_rows(20)
    rows += [("The GOAL, the match!", "sport"), ("the goal the match", "sport")]
    dataset = scan_texts(write_table(tmp_path / "t.csv", rows), valid_fraction=0.3, seed=1)
    sides = {normalised(text): name for name, items in dataset.splits.items() for text, _ in items}
    train = {normalised(text) for text, _ in dataset.split("train")}
    valid = {normalised(text) for text, _ in dataset.split("valid")}
    assert not train & valid and "the goal the match" in sides
    folder = tmp_path / "split"
    write_table(folder / "train.csv", [("Free prize, call now", "spam"), ("see you at noon", "ham")])
    write_table(folder / "valid.csv", [("free prize call now", "spam"), ("see you at noon", "spam")])
    warnings = [w["message"] for w in scan_texts(folder, valid_fraction=0.2, seed=0).warnings]
    assert any("same text after normalisation" in m and "leaks into valid" in m for m in warnings)
    assert any(m.startswith("the same text as") and "label noise" in m for m in warnings)


def test_check_reports_texts_longer_than_the_encoder_reads(tmp_path):
    rows = generated_rows(10) + [(" ".join(["word"] * 300), "sport")]
    result = graft.check(write_table(tmp_path / "t.csv", rows))
    assert result["ok"] and result["usable"] == 21 and result["truncated"]["texts"] == 1
    assert any("302 tokens: the encoder reads the first 128" in w["message"] for w in result["warnings"])
    one_label = write_table(tmp_path / "one.csv", [("a", "x"), ("b", "x")])
    assert not graft.check(one_label)["ok"]


def test_cached_rows_at_a_freeze_boundary_give_what_the_whole_encoder_gives(tiny_encoder):
    loaded = load_encoder(tiny_encoder)
    model = wrap_encoder(loaded.model, lambda features: torch.nn.Linear(features, 2)).eval()
    texts = ["a short one", "a much longer text with many more words in it than the first", "mid length text"]
    tokens = loaded.preprocessing.encode(texts)
    from graft.text.frozen_pass import frozen_pass

    rows = np.concatenate(list(frozen_pass(model, [(t, 0) for t in texts], 2, loaded.preprocessing)))
    assert rows.shape == (3, loaded.preprocessing.max_length, 17)  # padded to one shape, mask as the last channel
    with torch.inference_mode():
        whole = model(tokens)
        resumed = model(torch.from_numpy(rows), start=2)
        alone = model(loaded.preprocessing.encode(texts[:1]))
    torch.testing.assert_close(resumed, whole, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone, whole[:1], rtol=1e-4, atol=1e-5)  # padding never changes a text's output


def test_minilm_from_its_pip_package_gives_the_sentence_transformers_embedding():
    from sentence_transformers import SentenceTransformer

    loaded = load_encoder("all-MiniLM-L6-v2")
    model = wrap_encoder(loaded.model, lambda features: torch.nn.Identity()).eval()
    texts = ["Free entry in 2 a wkly comp to win FA Cup final tkts", "What is the capital of France?"]
    with torch.inference_mode():
        ours = model.forward_features(loaded.preprocessing.encode(texts))
    reference = SentenceTransformer(location("all-MiniLM-L6-v2"), device="cpu").encode(texts, convert_to_tensor=True)
    assert loaded.report.source == "package"
    torch.testing.assert_close(torch.nn.functional.normalize(ours, dim=1), reference, rtol=1e-4, atol=1e-5)


def test_train_predict_evaluate_and_load_a_text_run(tiny_encoder, text_table, tmp_path):
    summary = graft.train(text_table, tmp_path / "run", backbone=tiny_encoder, epochs=15, lr=0.05, quiet=True)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["modality"] == "text" and config["classes"] == ["food", "sport"]
    assert config["preprocessing"]["max_length"] == 16  # fitted to the longest text (<= 13 tokens), rounded up to 8
    assert summary["valid_accuracy"] >= 0.75
    long_text = "the garlic oven butter " * 40  # longer than a file name may be: a text, not a path
    results = graft.predict(tmp_path / "run", ["the garlic oven butter", "the striker goal league", long_text])
    assert [r["label"] for r in results] == ["food", "sport", "food"] and results[0]["text"] == "the garlic oven butter"
    metrics = graft.evaluate(tmp_path / "run")
    assert metrics["evaluated_on"].startswith("valid split") and metrics["n"] == 12
    other = write_table(tmp_path / "other.csv", generated_rows(6, seed=5) + [("unknown label", "weather")])
    metrics = graft.evaluate(tmp_path / "run", other)
    assert metrics["n"] == 12 and metrics["skipped"][0]["reason"] == "label 'weather' is not one the run knows"
    trained = graft.load(tmp_path / "run")
    assert trained.modality.name == "text"


def test_finetune_caches_the_frozen_layers(tiny_encoder, text_table, tmp_path):
    summary = graft.train(
        text_table, tmp_path / "ft", backbone=tiny_encoder, mode="finetune", unfreeze=1, epochs=3, quiet=True
    )
    assert summary["cached"] and summary["unfreeze"] == 1
    plan = json.loads((tmp_path / "ft" / "freeze_plan.json").read_text())
    assert plan["stages"] == ["embeddings", "layer0", "layer1"] and plan["trainable_from"] == 2
    metrics = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    assert metrics["inputs"]["start_stage"] == "layer1" and metrics["inputs"]["activation_shape"] == [16, 17]


def test_kill_9_then_resume_equals_an_uninterrupted_text_run(tiny_encoder, tmp_path):
    from tests.test_resume import _final, _kill_then_resume

    data = write_table(tmp_path / "many.csv", generated_rows(300))

    def command(run):
        return [sys.executable, "-m", "graft", "train", str(data), "--out", str(run), "--backbone", tiny_encoder] + [
            "--mode",
            "finetune",
            "--unfreeze",
            "1",
            "--epochs",
            "4",
            "--batch-size",
            "4",
            "--deterministic",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--json",
        ]

    subprocess.run(command(tmp_path / "reference"), check=True, capture_output=True)
    _kill_then_resume(command(tmp_path / "killed"), tmp_path / "killed", 2, 4, "text")
    assert _final(tmp_path / "killed") == _final(tmp_path / "reference")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"augment": True}, r"--augment/--no-augment \(inputs.augment\) does not apply to text data"),
        ({"image_size": 64}, r"--image-size .* does not apply to text data"),
        ({"mode": "finetune", "bn": "frozen"}, r"--bn .* does not apply to text data: a transformer has LayerNorm"),
        ({"labels": "re:(?P<x>.)"}, "--labels .re:.*does not apply to text: a text.s labels are columns of its table"),
    ],
)
def test_options_that_mean_nothing_for_text_are_refused(tiny_encoder, text_table, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message):
        graft.train(text_table, tmp_path / "run", backbone=tiny_encoder, quiet=True, **options)
    assert not (tmp_path / "run").exists()


def test_text_columns_are_refused_for_image_folders(class_folder, tmp_path):
    with pytest.raises(ConfigError, match="--text-column"):
        graft.train(class_folder / "red" / "red_0.png", tmp_path / "run", text_column="body", quiet=True)


def test_fewshot_tunes_the_encoder_contrastively_then_trains_a_head(tiny_encoder, tmp_path):
    data = write_table(tmp_path / "few.csv", generated_rows(8))
    summary = graft.train(data, tmp_path / "fs", backbone=tiny_encoder, mode="fewshot", unfreeze=1, quiet=True)
    metrics = json.loads((tmp_path / "fs" / "metrics.json").read_text())
    steps = metrics["contrastive"]
    assert len(steps) == 20 and all(step["phase"] == "contrastive" for step in steps)
    assert steps[-1]["train_loss"] < steps[0]["train_loss"]  # the pairs pull and push
    plan = json.loads((tmp_path / "fs" / "freeze_plan.json").read_text())
    assert plan["trainable_from"] == 3  # the head then trains on the tuned encoder's frozen features
    assert summary["mode"] == "fewshot" and summary["valid_accuracy"] is not None
    # the tuned weights are the run's: they differ from the pretrained encoder's top layer
    tuned = graft.load(tmp_path / "fs").model.stages["layer1"].state_dict()
    original = wrap_encoder(load_encoder(tiny_encoder).model, torch.nn.Identity).stages["layer1"].state_dict()
    assert any(not torch.equal(tuned[name], original[name]) for name in original)
    with pytest.raises(ConfigError, match="--backbone-lr-mult"):
        graft.train(data, tmp_path / "x", backbone=tiny_encoder, mode="fewshot", backbone_lr_mult=0.1, quiet=True)


def test_in_batch_pairs_and_centroid_accuracy():
    from graft.fewshot.objective import centroid_accuracy, pair_losses

    labels = torch.tensor([0, 0, 1, 1])
    aligned = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    pos, neg = pair_losses(aligned, labels)
    assert float(pos) == pytest.approx(0.0) and float(neg) == pytest.approx(0.0)
    pos, neg = pair_losses(torch.ones(4, 2), labels)
    assert float(pos) == pytest.approx(0.0) and float(neg) == pytest.approx(1.0)
    assert centroid_accuracy(aligned.numpy(), labels.numpy()) == 1.0
    assert centroid_accuracy(np.array([[1.0, 0], [0, 1], [1, 0], [0, 1]]), np.array([0, 0, 1, 1])) == 0.0


def test_classify_texts_zero_shot_with_the_pretrained_encoder_as_is(tmp_path):
    message = tmp_path / "message.txt"
    message.write_text("Preheat the oven and add the flour", encoding="utf-8")
    results = graft.classify(["The striker scored twice in the final", message], classes=["football", "cooking"])
    assert [r["top"][0]["label"] for r in results] == ["football", "cooking"]
    assert results[1]["text"] == "Preheat the oven and add the flour"
    assert sum(entry["prob"] for entry in results[0]["top"]) == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="at least two distinct class names"):
        graft.classify(["some text"], classes=["only"])


def test_a_text_run_exports_to_onnx_that_agrees_with_torch(tiny_encoder, text_table, tmp_path):
    import onnxruntime

    graft.train(text_table, tmp_path / "run", backbone=tiny_encoder, epochs=2, quiet=True)
    result = graft.export(tmp_path / "run", tmp_path / "model.onnx")
    assert result["parity"]["top1_agreement"] == 1.0
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    trained = graft.load(tmp_path / "run")
    texts = ["the garlic oven", "a much longer text about the striker and the goal and the league and the coach"]
    tokens = trained.preprocessing.encode(texts)
    (probabilities,) = session.run(None, {session.get_inputs()[0].name: tokens.numpy()})
    expected, _ = trained.probabilities([(text, 0) for text in texts])
    np.testing.assert_allclose(probabilities, expected, rtol=1e-3, atol=1e-5)
    # int8 quantises the matrix products only (a transformer's LayerNorm and softmax inputs stay float)
    quantised = graft.export(tmp_path / "run", tmp_path / "int8.onnx", int8=True, max_drop=100)
    assert quantised["int8"]["n"] == quantised["parity"]["n"] and quantised["int8"]["int8"]["bytes"] > 0
    import onnx

    weights = [i.name for i in onnx.load(str(tmp_path / "int8.onnx")).graph.initializer if "quantized" in i.name]
    assert weights and not [name for name in weights if "LayerNorm" in name], weights


def test_auto_on_a_layernorm_encoder_plans_by_size(tiny_encoder, tmp_path):
    from graft.core.advisor import decide

    data = write_table(tmp_path / "few.csv", generated_rows(8))
    summary = graft.train(data, tmp_path / "auto", backbone=tiny_encoder, mode="auto", quiet=True)
    advice = json.loads((tmp_path / "auto" / "advice.json").read_text())
    assert summary["mode"] == "fewshot" and advice["plan"]["mode"] == "fewshot"
    assert "no BatchNorm statistics" in " ".join(advice["reasons"]) and advice["evidence"]["logme"]
    evidence = {"stages": ["embeddings", *[f"layer{i}" for i in range(6)]], "bn_drift_mean": None}
    large = decide(
        "encoder", {"images": 4000, "classes": 6, "min_per_class": 300}, {**evidence, "head_confidence": None}, 1
    )
    assert (large.plan.mode, large.plan.unfreeze) == ("finetune", 2)


def test_a_table_with_a_column_per_task_trains_one_multi_task_text_model(tiny_encoder, tmp_path):
    rows = [
        (text, label, "yes" if len(text.split()) > 6 else "no", str(len(text.split())))
        for text, label in generated_rows()
    ]
    rows[3] = (rows[3][0], rows[3][1], "maybe", "4")  # not a class of 'long': skipped with its line
    rows[5] = (rows[5][0], "", "", "")  # no label for any task: skipped
    rows[7] = (rows[7][0], "", "yes", "5")  # a missing topic: the text still teaches 'long' and 'words'
    table = write_table(tmp_path / "tasks.csv", rows, header=("text", "topic", "long", "words"))
    tasks = "topic:classification,long:no/yes,words:regression"
    checked = graft.check(table, labels="columns", tasks=tasks)
    assert checked["ok"] and checked["classes"] == {"topic": ["food", "sport"], "long": ["no", "yes"]}
    assert {(entry["file"], entry["reason"]) for entry in checked["skipped"]} == {
        (f"{table}:5", "long value 'maybe' is not one of 2 classes (no, yes) nor an index below 2"),
        (f"{table}:7", "no label for any task"),
    }
    summary = graft.train(
        table, tmp_path / "run", labels="columns", tasks=tasks, backbone=tiny_encoder, epochs=3, quiet=True
    )
    assert summary["kind"] == "multi-task" and summary["tasks"] == ["topic", "long", "words"]
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    texts = [text for items in manifest["splits"].values() for text, _ in items]
    assert rows[7][0] in texts and rows[5][0] not in texts and len(texts) == len(rows) - 2
    trained = graft.load(tmp_path / "run")
    answer = trained.predict(["the goal striker match number 99"])[0]
    assert answer["text"] == "the goal striker match number 99"
    assert set(answer["tasks"]) == {"topic", "long", "words"} and answer["tasks"]["topic"]["label"] in ("food", "sport")
    held_out = trained.evaluate()  # the run's own test split
    assert held_out["n"] == len(manifest["splits"]["test"]) and set(held_out["tasks"]) == {"topic", "long", "words"}
    other = shutil.copy(table, tmp_path / "other.csv")  # another table: every usable row, skipped ones listed
    evaluated = trained.evaluate(other)
    assert evaluated["n"] == len(rows) - 2 and len(evaluated["skipped"]) == 2
    with pytest.raises(ConfigError, match="--labels 'utkface' does not apply to text"):
        graft.train(table, tmp_path / "bad", labels="utkface", tasks=tasks, backbone=tiny_encoder, quiet=True)


def test_fewshot_refits_the_head_on_train_and_valid_and_says_valid_is_not_held_out(tiny_encoder, tmp_path):
    from sklearn.linear_model import LogisticRegression

    data = write_table(tmp_path / "few.csv", generated_rows(8))
    graft.train(data, tmp_path / "fs", backbone=tiny_encoder, mode="fewshot", unfreeze=1, quiet=True)
    metrics = json.loads((tmp_path / "fs" / "metrics.json").read_text())
    refit = metrics["head_refit"]
    assert refit["on"] == "train+valid" and "not held out" in refit["note"]
    # the last validation score that was held out is kept beside it: the loop's best epoch's
    history = json.loads((tmp_path / "fs" / "history.json").read_text())
    assert refit["loop_valid_score"] == history[metrics["best_epoch"] - 1]["valid_score"]
    run = graft.load(tmp_path / "fs")
    config = json.loads((tmp_path / "fs" / "config.json").read_text())
    assert refit["examples"] == config["data"]["counts"]["train"] + config["data"]["counts"]["valid"]
    # the saved head is the converged logistic regression on the tuned features of those examples
    model, head = run.model, run.model.head
    run.model.head = torch.nn.Identity()
    manifest = json.loads((tmp_path / "fs" / "manifest.json").read_text())
    items = [(text, label) for split in ("train", "valid") for text, label in manifest["splits"][split]]
    loader = torch.utils.data.DataLoader(run.modality.examples(items, run.preprocessing, augment=False), batch_size=64)
    features = torch.cat([model(batch[0]) for batch in loader]).detach().numpy()
    model.head = head
    expected = LogisticRegression(C=1.0, max_iter=5000, random_state=0).fit(features, [label for _, label in items])
    logits = head(torch.as_tensor(features)).detach().numpy()
    # two classes: the head's logit difference is the regression's decision function, to the solvers' tolerance
    assert np.abs((logits[:, 1] - logits[:, 0]) - expected.decision_function(features)).max() < 2e-3
    assert "head refit" in (page := (tmp_path / "fs" / "report.html").read_text())
    assert f"the loop&#x27;s head scored {refit['loop_valid_score']:.4f} on valid, held out" in page
