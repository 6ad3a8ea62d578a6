"""The activation cache: rows computed once per image and view, reused, invalidated by their key,
memory-mapped; training from it gives what training through the frozen stages gives."""

import json

import numpy as np
import pytest
import torch

import graft
from graft.core.cache import ActivationKey, ActivationStore, cache_usage, cached_rows, clear_cache
from tests.conftest import TINY_BACKBONE


def _key(**changes):
    values = dict(
        architecture="a",
        weights="w" * 64,
        preprocessing={"input_size": 8},
        stop=3,
        view="clean",
        computed_by={"timm": "1.0.0", "pool": None},
    )
    values.update(changes)
    return ActivationKey(**values)


def _computer(calls):
    def compute(positions):
        calls.append(list(positions))
        for position in positions:
            yield np.full((1, 2, 3), float(position), dtype=np.float32)

    return compute


def test_rows_are_computed_once_then_read_back_memory_mapped(tmp_path):
    calls = []
    store = ActivationStore(tmp_path, _key())
    first = cached_rows(store, ["d0", "d1", "d2"], _computer(calls))
    second = cached_rows(ActivationStore(tmp_path, _key()), ["d2", "d0"], _computer(calls))
    assert calls == [[0, 1, 2]]
    assert float(first[1][0, 0]) == 1.0
    assert [float(second[i][0, 0]) for i in range(2)] == [2.0, 0.0]
    assert all(isinstance(chunk, np.memmap) for chunk in second.chunks.values())


def test_only_missing_rows_are_computed_and_duplicates_once(tmp_path):
    calls = []
    cached_rows(ActivationStore(tmp_path, _key()), ["d0"], _computer(calls))
    rows = cached_rows(ActivationStore(tmp_path, _key()), ["d0", "d1", "d1", "d2"], _computer(calls))
    assert calls == [[0], [1, 3]]
    assert len(rows) == 4 and float(rows[2][0, 0]) == 1.0


@pytest.mark.parametrize(
    "change",
    [
        {"weights": "x" * 64},
        {"preprocessing": {"input_size": 9}},
        {"stop": 2},
        {"view": "augmented:1:seed0:r"},
        {"architecture": "b"},
        {"computed_by": {"timm": "1.0.1", "pool": None}},  # an upgraded library
        {"computed_by": {"timm": "1.0.0", "pool": "MeanPool"}},  # another pooling of the same stages
    ],
)
def test_anything_in_the_key_invalidates(tmp_path, change):
    calls = []
    cached_rows(ActivationStore(tmp_path, _key()), ["d0"], _computer(calls))
    cached_rows(ActivationStore(tmp_path, _key(**change)), ["d0"], _computer(calls))
    assert len(calls) == 2


def test_a_damaged_index_or_chunk_only_costs_recomputation(tmp_path):
    calls = []
    store = ActivationStore(tmp_path, _key())
    cached_rows(store, ["d0", "d1"], _computer(calls))
    (store.folder / "index.json").write_text("{not json")
    cached_rows(store, ["d0", "d1"], _computer(calls))
    for chunk in store.folder.glob("chunk-*.npy"):
        chunk.write_bytes(b"garbage")
    rows = cached_rows(store, ["d0", "d1"], _computer(calls))
    assert len(calls) == 3 and float(rows[1][0, 0]) == 1.0


def test_a_lookup_parses_the_index_once_and_checks_each_chunk_once_not_each_row(tmp_path, monkeypatch):
    import graft.core.cache as cache

    store = ActivationStore(tmp_path, _key())
    for part in range(3):  # three chunks of 200 rows: a namespace shared with other datasets
        cached_rows(store, [f"d{part}-{i}" for i in range(200)], _computer([]))
    parsed, checked = [], []
    real_read, real_is_file = cache.read_json, cache.Path.is_file
    monkeypatch.setattr(cache, "read_json", lambda path: parsed.append(path) or real_read(path))
    monkeypatch.setattr(cache.Path, "is_file", lambda path: checked.append(path.name) or real_is_file(path))
    cache._PARSED_INDEXES.clear()
    for _ in range(4):  # a race asks the same namespace again and again
        assert store.missing(["d0-1", "d2-199", "new"]) == [2]
    assert len(parsed) == 1 and len(checked) == 4 * 3
    (store.folder / sorted(store.folder.glob("chunk-*.npy"))[0].name).unlink()
    assert len(store.missing([f"d{part}-0" for part in range(3)])) == 1  # a lost chunk's rows count as missing
    cached_rows(store, ["later"], _computer([]))  # a write replaces the index: it is parsed anew
    assert store.missing(["later"]) == [] and len(parsed) == 3  # the write's own read, then the lookup's


def test_usage_and_clear(tmp_path):
    cached_rows(ActivationStore(tmp_path, _key()), ["d0", "d1"], _computer([]))
    usage = cache_usage(tmp_path)
    assert usage["namespaces"][0]["images"] == 2 and usage["bytes"] > 0
    assert clear_cache(tmp_path) == usage["bytes"]
    assert cache_usage(tmp_path)["namespaces"] == []


def _train(data, out, **kwargs):
    options = dict(
        backbone=TINY_BACKBONE,
        pretrained=False,
        epochs=3,
        num_workers=0,
        quiet=True,
        batch_size=8,
        seed=1,
        deterministic=True,
    )
    options.update(kwargs)
    return graft.train(data, out, **options)


def _history(run):
    return json.loads((run / "history.json").read_text())


@pytest.mark.parametrize("mode,unfreeze", [("extract", None), ("finetune", 2)])
def test_training_from_the_cache_equals_training_through_the_frozen_stages(class_folder, tmp_path, mode, unfreeze):
    cached = _train(
        class_folder, tmp_path / "cached", mode=mode, unfreeze=unfreeze, augment=False, cache_dir=tmp_path / "cache"
    )
    direct = _train(class_folder, tmp_path / "direct", mode=mode, unfreeze=unfreeze, augment=False, cache=False)
    assert cached["cached"] and not direct["cached"]
    for a, b in zip(_history(tmp_path / "cached"), _history(tmp_path / "direct")):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-5)
        assert a["valid_loss"] == pytest.approx(b["valid_loss"], abs=1e-5)
        assert a["valid_accuracy"] == b["valid_accuracy"]


def test_a_second_run_reuses_the_cache_and_augmented_views_are_cached_per_view(class_folder, tmp_path):
    cache = tmp_path / "cache"
    _train(class_folder, tmp_path / "a", mode="finetune", unfreeze=2, augment=True, views=2, cache_dir=cache)
    before = cache_usage(cache)
    assert sorted(entry["view"].split(":")[0] for entry in before["namespaces"]) == ["augmented", "augmented", "clean"]
    assert {entry["images"] for entry in before["namespaces"]} == {24, 6}  # train views; valid clean
    chunks = sorted(p.stat().st_mtime_ns for p in cache.rglob("chunk-*.npy"))
    _train(class_folder, tmp_path / "b", mode="finetune", unfreeze=2, augment=True, views=2, cache_dir=cache)
    assert sorted(p.stat().st_mtime_ns for p in cache.rglob("chunk-*.npy")) == chunks  # nothing recomputed
    assert _history(tmp_path / "a") == [
        dict(r, seconds=a["seconds"]) for r, a in zip(_history(tmp_path / "b"), _history(tmp_path / "a"))
    ]
    _train(class_folder, tmp_path / "c", mode="finetune", unfreeze=1, augment=True, views=2, cache_dir=cache)
    assert len(cache_usage(cache)["namespaces"]) == 6  # another freeze boundary: new rows


def test_rows_are_keyed_by_the_libraries_that_computed_them_and_by_the_pooling():
    """Rows an older timm or transformers computed are not read back after an upgrade; pooled features of
    the same stages pooled another way are other rows."""
    import timm
    import transformers

    from graft.core.inputs import frozen_key
    from graft.image.backbones import create_backbone
    from graft.image.modality import IMAGE
    from graft.image.model import build_transfer_model
    from graft.text.modality import TEXT

    loaded = create_backbone(TINY_BACKBONE, pretrained=False)
    model = build_transfer_model(loaded.model, "linear", 3, input_size=loaded.preprocessing.input_size)
    inner = frozen_key(IMAGE, model, 2, "tiny", loaded.preprocessing)["computed_by"]
    assert inner["timm"] == timm.__version__ and torch.__version__.startswith(inner["torch"]) and inner["pool"] is None
    pooled = frozen_key(IMAGE, model, len(model.stages), "tiny", loaded.preprocessing)["computed_by"]
    assert pooled["pool"] == type(model.pool).__qualname__
    model.pool = torch.nn.Flatten()
    assert frozen_key(IMAGE, model, len(model.stages), "tiny", loaded.preprocessing)["computed_by"] != pooled
    assert TEXT.frozen_libraries and transformers.__version__ in str(
        frozen_key(TEXT, model, 2, "tiny", loaded.preprocessing)["computed_by"]
    )


@pytest.mark.parametrize("round_", [None, 1])
def test_the_frozen_pass_in_worker_processes_gives_the_rows_of_the_in_process_pass(
    class_folder, tmp_path, round_, monkeypatch
):
    import os

    from graft.core.inputs import frozen_key, frozen_rows
    from graft.image.backbones import create_backbone
    from graft.image.data import scan_folder
    from graft.image.frozen_pass import FrozenForward
    from graft.image.modality import IMAGE
    from graft.image.model import build_transfer_model

    where = tmp_path / "pids"
    original = FrozenForward.__getitem__

    def recorded(self, keys):  # forked workers inherit the patch; they append their pid to a file
        with open(where, "a") as handle:
            handle.write(f"{os.getpid()}\n")
        return original(self, keys)

    monkeypatch.setattr(FrozenForward, "__getitem__", recorded)

    loaded = create_backbone(TINY_BACKBONE, pretrained=False)
    model = build_transfer_model(loaded.model, "linear", 3, input_size=loaded.preprocessing.input_size)
    dataset = scan_folder(class_folder)
    items = dataset.split("train")
    digests = [dataset.digest(path) for path, _ in items]
    base = frozen_key(IMAGE, model, 2, "tiny", loaded.preprocessing)
    rows = {}
    for workers in (0, 2):
        where.write_text("")  # keeps the pids of the last pass only
        rows[workers] = frozen_rows(
            IMAGE,
            model,
            items,
            digests,
            loaded.preprocessing,
            base=base,
            root=tmp_path / f"cache{workers}",
            workers=workers,
            seed=4,
            round_=round_,
            keys=list(range(len(items))),
        ).materialize()
    pids = {int(pid) for pid in where.read_text().split()}
    assert len(pids) == 2 and os.getpid() not in pids  # the second pass really ran in two other processes
    assert rows[0].shape[0] == len(items) == rows[2].shape[0]
    assert torch.allclose(
        rows[0], rows[2], atol=1e-5
    )  # same images, same order, same views; threads may round differently


def test_the_frozen_pass_runs_one_process_per_core(monkeypatch):
    from graft.image import frozen_pass

    monkeypatch.setattr(frozen_pass, "usable_cores", lambda: 1)
    assert frozen_pass.forward_workers() == 0
    monkeypatch.setattr(frozen_pass, "usable_cores", lambda: 2)
    assert frozen_pass.forward_workers() == 2
    monkeypatch.setattr(frozen_pass, "usable_cores", lambda: 64)
    assert frozen_pass.forward_workers() == frozen_pass.MAX_FORWARD_WORKERS


def test_a_batch_of_rows_is_gathered_across_chunks_in_the_order_asked(tmp_path):
    cached_rows(ActivationStore(tmp_path, _key()), ["d0", "d1"], _computer([]))
    rows = cached_rows(ActivationStore(tmp_path, _key()), ["d0", "d1", "d2", "d3"], _computer([]))  # two chunks
    assert len(rows.chunks) == 2
    order = [3, 0, 2, 2, 1]
    assert rows.rows(order)[:, 0, 0].tolist() == [3.0, 0.0, 2.0, 2.0, 1.0]
    assert torch.equal(rows.rows(order), torch.stack([rows[i] for i in order]))


def test_a_batch_of_cached_views_shows_each_image_its_view_of_the_epoch(tmp_path):
    from graft.core.inputs import CachedViews

    views = []
    for view in range(3):

        def compute(positions, view=view):
            for position in positions:
                yield np.full((1, 2), 10.0 * view + position, dtype=np.float32)

        views.append(
            cached_rows(ActivationStore(tmp_path, _key(view=f"v{view}")), [f"d{i}" for i in range(6)], compute)
        )
    dataset = CachedViews(views, labels=[0, 1, 0, 1, 0, 1], seed=3, image_keys=[11, 12, 13, 14, 15, 16])
    keys = [(epoch, index) for epoch in (1, 2) for index in (5, 0, 3)]
    rows, labels = dataset[keys]
    assert rows[:, 0].tolist() == [10.0 * dataset.view_of(epoch, index) + index for epoch, index in keys]
    assert labels.tolist() == [1, 0, 1, 1, 0, 1] and labels.dtype == torch.int64
    assert len({dataset.view_of(epoch, index) for epoch, index in keys}) > 1, "the keys should span several views"


def test_a_loader_of_cached_batches_gives_the_batches_of_a_per_row_loader(tmp_path):
    """Whole-batch reads must not change what training sees: same batches, same order each epoch."""
    from graft.core.inputs import cached_loader
    from graft.core.reproducibility import EpochSampler

    def compute(positions):
        for position in positions:
            yield np.full((1, 3), float(position), dtype=np.float32)

    rows = cached_rows(ActivationStore(tmp_path, _key()), [f"d{i}" for i in range(11)], compute)
    items = [(f"image{i}.png", i % 3) for i in range(11)]
    pairs = list(zip(rows.materialize(), [label for _, label in items]))

    def order(epoch, shuffle):
        sampler = EpochSampler(11, 5, shuffle=shuffle)
        sampler.set_epoch(epoch)
        return [index for _, index in sampler]

    for shuffle in (True, False):
        loader = cached_loader([rows], items, seed=5, image_keys=list(range(11)), batch_size=4, shuffle=shuffle)
        assert len(loader) == 3
        for epoch in (1, 2):
            loader.sampler.set_epoch(epoch)
            per_row = torch.utils.data.DataLoader(pairs, batch_size=4, sampler=order(epoch, shuffle))
            for (batch, labels), (expected, expected_labels) in zip(loader, per_row, strict=True):
                assert torch.equal(batch, expected) and torch.equal(labels, expected_labels)


def test_the_frozen_pass_runs_the_stages_with_batchnorm_folded_and_gives_the_models_features(class_folder):
    from graft.image.backbones import create_backbone
    from graft.image.data import scan_folder
    from graft.image.decoded import ImageDataset
    from graft.image.frozen_pass import FrozenForward
    from graft.image.model import build_transfer_model

    loaded = create_backbone(TINY_BACKBONE, pretrained=False)
    model = build_transfer_model(loaded.model, "linear", 3, input_size=loaded.preprocessing.input_size).eval()
    generator = torch.Generator().manual_seed(0)
    for batchnorm in (
        m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)
    ):  # statistics that folding must carry over
        batchnorm.running_mean.copy_(torch.randn(batchnorm.num_features, generator=generator) * 0.1)
        batchnorm.running_var.copy_(torch.rand(batchnorm.num_features, generator=generator) + 0.5)
    items = scan_folder(class_folder).split("train")
    images = ImageDataset(items, loaded.preprocessing.eval_transform())
    frozen = FrozenForward(
        model,
        ImageDataset(items, loaded.preprocessing.eval_transform(normalize=False)),
        len(model.stages),
        loaded.preprocessing,
    )
    assert frozen.folded == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.stages.modules()) > 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in frozen.frozen.modules())
    rows = frozen[[0, 1, 2]]
    assert isinstance(rows, np.ndarray)  # pickled through the pipe from a worker, not a shared-memory tensor
    rows = torch.from_numpy(rows)
    with torch.no_grad():
        expected = model.forward_features(torch.stack([images[i][0] for i in range(3)]))
    assert rows.shape == expected.shape
    assert (rows - expected).abs().max() < 1e-4 * expected.abs().max()


def test_decoding_in_workers_and_running_in_this_process_the_gpu_path_gives_the_worker_paths_rows(class_folder):
    """On a GPU the workers only decode and the stages run in the parent (decode_there_run_here); on the
    CPU here the same split of work must give the rows of the usual pass, in the same order."""
    from graft.image.backbones import create_backbone
    from graft.image.data import scan_folder
    from graft.image.decoded import ImageDataset
    from graft.image.frozen_pass import FrozenForward, decode_there_run_here, forward_batches
    from graft.image.model import build_transfer_model

    loaded = create_backbone(TINY_BACKBONE, pretrained=False)
    model = build_transfer_model(loaded.model, "linear", 3, input_size=loaded.preprocessing.input_size).eval()
    items = scan_folder(class_folder).split("train")
    pixels = ImageDataset(items, loaded.preprocessing.eval_transform(normalize=False))
    order = list(reversed(range(len(items))))
    usual = np.concatenate(list(forward_batches(model, pixels, 2, loaded.preprocessing, workers=2, sampler=order)))
    forward = FrozenForward(model, pixels, 2, loaded.preprocessing)
    batches = list(decode_there_run_here(forward, order, workers=2, batch_size=5))
    assert [len(batch) for batch in batches][:2] == [5, 5]  # the GPU path's own batch size
    assert np.allclose(np.concatenate(batches), usual, atol=1e-5)


@pytest.mark.parametrize("augmented", [False, True])
def test_a_batch_of_uint8_pixels_normalises_to_what_the_per_image_transform_gives_bit_for_bit(class_folder, augmented):
    """The frozen pass decodes to uint8 and normalises whole batches (Preprocessing.normalize_batch):
    the cache must hold the activations of exactly the pixels the per-image path would give."""
    from graft.image.data import scan_folder
    from graft.image.decoded import ImageDataset
    from graft.image.preprocessing import Preprocessing

    preprocessing = Preprocessing(input_size=64, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    items = scan_folder(class_folder).split("train")
    make = preprocessing.train_transform if augmented else preprocessing.eval_transform
    seed = 3 if augmented else None
    normalised = ImageDataset(items, make(), seed=seed)
    pixels = ImageDataset(items, make(normalize=False), seed=seed)
    assert pixels[0][0].dtype == torch.uint8
    keys = [(1, i) for i in range(len(items))]
    batch = preprocessing.normalize_batch(torch.stack([pixels[key][0] for key in keys]))
    assert torch.equal(batch, torch.stack([normalised[key][0] for key in keys]))


def test_the_cache_records_use_and_is_trimmed_least_recently_used_first(tmp_path, monkeypatch):
    from graft.core import cache as cache_module
    from graft.core.cache import cache_usage, parse_size, prune_cache

    assert parse_size("5GB") == 5_000_000_000 and parse_size("500MB") == 500_000_000 and parse_size("123") == 123
    with pytest.raises(graft.ConfigError, match="500MB"):
        parse_size("lots")
    clock = [1000.0]
    monkeypatch.setattr(cache_module.time, "time", lambda: clock[0])
    for number, view in enumerate(("old", "middle", "new")):
        clock[0] += 100
        cached_rows(ActivationStore(tmp_path, _key(view=view)), [f"d{number}"], _computer([]), source=f"/data/{view}")
    usage = {entry["view"]: entry for entry in cache_usage(tmp_path)["namespaces"]}
    assert usage["old"]["data"] == ["/data/old"] and usage["old"]["last_used"] < usage["new"]["last_used"]
    size = usage["old"]["bytes"]
    keep = {usage["old"]["namespace"]}
    removed = prune_cache(tmp_path, max_bytes=2 * size + size // 2, keep=keep)  # room for two: the oldest unkept goes
    assert [entry["view"] for entry in removed] == ["middle"]
    assert {entry["view"] for entry in cache_usage(tmp_path)["namespaces"]} == {"old", "new"}
    clock[0] += 86400 * 40
    assert {entry["view"] for entry in prune_cache(tmp_path, older_than_days=30)} == {"old", "new"}


def test_a_run_trims_the_cache_to_its_limit_but_keeps_its_own_rows(class_folder, tmp_path, monkeypatch):
    from graft.core.cache import cache_usage

    cache = tmp_path / "cache"
    options = dict(
        backbone=TINY_BACKBONE, pretrained=False, epochs=1, num_workers=0, quiet=True, batch_size=8, cache_dir=cache
    )
    graft.train(class_folder, tmp_path / "a", mode="finetune", unfreeze=1, augment=False, **options)
    first = {entry["namespace"] for entry in cache_usage(cache)["namespaces"]}
    monkeypatch.setenv("GRAFT_CACHE_LIMIT", "1")  # one byte: everything not used by the next run goes
    graft.train(class_folder, tmp_path / "b", mode="extract", **options)
    left = cache_usage(cache)["namespaces"]
    assert left and not first & {entry["namespace"] for entry in left}
    assert all(entry["data"] == [str(class_folder)] for entry in left)


def test_every_splits_clean_view_goes_through_one_frozen_pass(split_folder, tmp_path, monkeypatch):
    """Each frozen pass starts worker processes (and folds the stages) anew: train, valid and test rows
    missing from the cache are computed in one pass, not one per split."""
    from graft.image.modality import IMAGE

    passes = []
    real_pass = IMAGE.frozen_pass

    def counted(model, items, *args, **kwargs):
        passes.append(len(items))
        return real_pass(model, items, *args, **kwargs)

    monkeypatch.setattr(IMAGE, "frozen_pass", counted)
    _train(split_folder, tmp_path / "run", mode="extract", augment=False, cache_dir=tmp_path / "cache")
    assert passes == [24 + 9 + 9]
