"""The activation cache: what the frozen part of a network computes, computed once and kept on disk.

A frozen stage computes the same thing every epoch, so graft runs it once per image (and per
augmented view) and trains only what is not frozen: the head on pooled features (feature
extraction), or the trainable tail on the activations at the freeze boundary (fine-tuning).

Rows are keyed by the image's sha256; a *namespace* holds one kind of row and is named by the hash
of everything that determines it: the frozen stages' weights (hashed tensor by tensor), the
architecture, the preprocessing, where the frozen part stops, which view of the image (the clean
evaluation view, or augmented view ``v`` under seed ``s``) and what computed the rows (the versions of
the libraries that decode and run the stages, the pooling of pooled rows). Change any of these and the
rows are computed anew (an upgraded timm or transformers included); run again with the same and they are
read back. Rows live in ``.npy`` chunk files
that are memory-mapped, so a dataset larger than memory trains from the page cache; chunks and the
index are written atomically, so a killed run leaves no half-written row behind.

The default location is ``$GRAFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/graft``, else ``~/.cache/graft``.
Each namespace records when it was last used and for which data; after a run the cache is trimmed to
``$GRAFT_CACHE_LIMIT`` (default 5 GB) by deleting the least recently used namespaces (never those the
run just used), and ``graft cache --prune`` trims it on demand.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from graft.core.distributed import SINGLE, Processes
from graft.errors import ConfigError
from graft.fileio import atomic_write_json, default_cache_dir, read_json

# 2: rows computed with BatchNorm folded into the convolutions (equal to version 1's up to float rounding)
FORMAT_VERSION = 2
INDEX = "index.json"
USAGE = "usage.json"  # when the namespace was last used, and for which data
DEFAULT_LIMIT = "5GB"
KEY = "key.json"
# The last few parsed indexes (they can be megabytes), by (path, inode, size, mtime): every write replaces
# the file (a new inode), so a changed index is never served from here.
_PARSED_INDEXES: dict[tuple, dict[str, list]] = {}


def weights_digest(modules: Iterable[torch.nn.Module]) -> str:
    """sha256 over the parameters and buffers (names, shapes, bytes) of ``modules``, in order."""
    digest = hashlib.sha256()
    for index, module in enumerate(modules):
        for name, tensor in module.state_dict().items():
            digest.update(f"{index}.{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class ActivationKey:
    """Everything that determines one image's cached row (besides the image's bytes)."""

    architecture: str
    weights: str  # weights_digest of the frozen stages
    preprocessing: dict[str, Any]
    stop: int  # stages [0, stop) are run; stop == number of stages means pooled features
    view: str  # "clean", or "augmented:<view>:seed<seed>:<augmentation recipe>"
    # the code behind the rows: library versions (library_versions) and, for pooled rows, the pooling
    computed_by: dict[str, Any]

    def namespace(self) -> str:
        text = json.dumps({"format": FORMAT_VERSION, **self.__dict__}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@functools.cache
def library_versions(names: tuple[str, ...]) -> dict[str, str]:
    """The installed version of each distribution in ``names`` ("absent" where none is): part of the keys of
    cached computation, so rows computed by an older timm or transformers are not read back after an upgrade."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


class CachedRows:
    """Cached activations for a list of images, in the list's order, backed by memory-mapped chunks."""

    def __init__(self, chunks: dict[str, np.ndarray], locations: Sequence[tuple[str, int]]):
        self.chunks = chunks
        self.locations = list(locations)

    def __len__(self) -> int:
        return len(self.locations)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(next(iter(self.chunks.values())).shape[1:]) if self.chunks else ()

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.rows([index])[0]

    def rows(self, indices: Sequence[int]) -> torch.Tensor:
        """The rows at ``indices``, stacked in that order: one gather per chunk rather than one read
        per row (a batch of pooled features costs ~0.1 ms instead of ~1 ms)."""
        by_chunk: dict[str, tuple[list[int], list[int]]] = {}
        for position, index in enumerate(indices):
            chunk, row = self.locations[index]
            positions, rows = by_chunk.setdefault(chunk, ([], []))
            positions.append(position)
            rows.append(row)
        first = next(iter(self.chunks.values()))
        out = np.empty((len(indices), *first.shape[1:]), dtype=first.dtype)
        for chunk, (positions, rows) in by_chunk.items():
            out[positions] = self.chunks[chunk][rows]
        return torch.from_numpy(out)

    def materialize(self) -> torch.Tensor:
        """All rows as one in-memory tensor (small caches only, e.g. pooled features)."""
        return self.rows(range(len(self))) if self.locations else torch.zeros(0)


class ActivationStore:
    """One namespace of the cache: rows of one :class:`ActivationKey`, by image sha256."""

    def __init__(self, root: str | os.PathLike, key: ActivationKey):
        self.key = key
        self.folder = Path(root) / key.namespace()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers of this namespace (two runs computing the same rows at once)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / ".lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            for stale in self.folder.glob(".*.tmp"):  # left by a writer killed mid-chunk (writers hold this lock)
                stale.unlink(missing_ok=True)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _index(self) -> dict[str, list]:
        """The namespace's rows by image digest, leaving out rows whose chunk file is gone. A namespace is
        shared by every dataset run through the same frozen stages, so the index can hold far more rows than
        this run asks for: it is parsed once per version of the file (a race reads it a dozen times) and each
        chunk's file is checked once, not once per row."""
        path = self.folder / INDEX
        try:
            stat = path.stat()
        except OSError:
            return {}
        version = (str(path), stat.st_ino, stat.st_size, stat.st_mtime_ns)
        index = _PARSED_INDEXES.get(version)
        if index is None:
            try:
                index = read_json(path)
            except (OSError, json.JSONDecodeError):
                return {}  # a damaged index only costs recomputation
            for known in [known for known in _PARSED_INDEXES if known[0] == version[0]]:
                del _PARSED_INDEXES[known]  # this file's older versions
            while len(_PARSED_INDEXES) >= 8:
                del _PARSED_INDEXES[next(iter(_PARSED_INDEXES))]  # the oldest file's
            _PARSED_INDEXES[version] = index
        present = {name for name in {location[0] for location in index.values()} if (self.folder / name).is_file()}
        return {digest: location for digest, location in index.items() if location[0] in present}

    def _open_chunks(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        chunks = {}
        for name in set(names):
            try:
                chunks[name] = np.load(self.folder / name, mmap_mode="r")
            except (OSError, ValueError):
                pass  # unreadable chunk: its rows count as missing
        return chunks

    def missing(self, digests: Sequence[str]) -> list[int]:
        """Positions in ``digests`` whose rows are not cached yet."""
        index = self._index()
        chunks = self._open_chunks(location[0] for location in index.values())
        return [i for i, digest in enumerate(digests) if digest not in index or index[digest][0] not in chunks]

    def add(self, digests: Sequence[str], batches: Iterable[np.ndarray]) -> None:
        """Store the rows produced by ``batches`` (in ``digests`` order), streamed into a new chunk file."""
        if not digests:
            return
        with self._locked():
            fd, temporary = tempfile.mkstemp(prefix=".chunk-", suffix=".npy.tmp", dir=self.folder)
            os.close(fd)
            try:
                written, array = 0, None
                for batch in batches:
                    if array is None:
                        array = np.lib.format.open_memmap(
                            temporary, mode="w+", dtype=np.float32, shape=(len(digests), *batch.shape[1:])
                        )
                        self._reserve(temporary, len(digests))
                    array[written : written + len(batch)] = batch
                    written += len(batch)
                if array is None or written != len(digests):
                    raise RuntimeError(f"computed {written} activation rows for {len(digests)} images")
                array.flush()
                del array
                name = f"chunk-{hashlib.sha256(''.join(digests).encode()).hexdigest()[:16]}.npy"
                os.replace(temporary, self.folder / name)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                close = getattr(batches, "close", None)
                if close is not None:  # a generator of batches stops its worker processes now
                    close()
                raise
            index = self._index()
            index.update({digest: [name, row] for row, digest in enumerate(digests)})
            if not (self.folder / KEY).is_file():
                atomic_write_json(self.folder / KEY, self.key.__dict__)
            atomic_write_json(self.folder / INDEX, index)

    def _reserve(self, path: str, images: int) -> None:
        """Allocate the chunk's disk blocks now: on a full disk a memory-mapped write would kill the
        process with SIGBUS halfway through the frozen pass, with no message."""
        size = os.path.getsize(path)
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, size)
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    return  # a file system that cannot reserve space: write and hope, as before
                free = shutil.disk_usage(self.folder).free
                raise ConfigError(
                    f"the activation cache folder '{self.folder.parent}' is full: {size / 1e6:.0f} MB are needed for "
                    f"{images} images, {free / 1e6:.0f} MB are free",
                    hint="free some space (graft cache --clear), pass --cache-dir DIR on a larger disk, or --no-cache",
                ) from None

    def rows(self, digests: Sequence[str]) -> CachedRows:
        index = self._index()
        locations = [tuple(index[digest]) for digest in digests]
        return CachedRows(self._open_chunks(name for name, _ in locations), locations)


def cached_rows(
    store: ActivationStore,
    digests: Sequence[str],
    compute: Callable[[list[int]], Iterable[np.ndarray]],
    source: str | None = None,
    processes: Processes = SINGLE,
) -> CachedRows:
    """Rows for ``digests``, computing (``compute(positions)`` yields batches in order) only those not cached.

    Identical images (same sha256) are computed once. The namespace records this use (and ``source``,
    where the data came from) for ``graft cache`` and least-recently-used trimming. With ``processes`` (a run
    over several) each computes its share of the missing rows, in a chunk of its own, and all wait until the
    cache holds every row.
    """
    processes.barrier()  # every rank looks at the same cache: none has added its share yet
    missing = store.missing(digests)
    unique: dict[str, int] = {}
    for position in missing:
        unique.setdefault(digests[position], position)
    if processes.distributed:
        mine = processes.share(list(unique))
        unique = {digest: unique[digest] for digest in mine}
    if unique:
        store.add(list(unique), compute(list(unique.values())))
    processes.barrier()  # and reads it once every share is in
    if processes.distributed and missing and store.missing(digests):  # a cache another machine does not see
        raise ConfigError(
            f"rows the other processes of this run computed are not in '{store.folder.parent}': the processes of a "
            "run must share the activation cache",
            hint="on several machines, give every one the same --cache-dir (or GRAFT_CACHE_DIR) on a filesystem "
            "they all mount",
        )
    if processes.is_main:
        _record_use(store.folder, source)
    return store.rows(digests)


def _record_use(folder: Path, source: str | None) -> None:
    usage = _usage(folder)
    sources = usage.get("data", [])
    if source and source not in sources:
        sources = (sources + [source])[-8:]
    try:
        atomic_write_json(folder / USAGE, {"last_used": time.time(), "data": sources})
    except OSError:
        pass  # bookkeeping only: a read-only cache still serves rows


def _usage(folder: Path) -> dict[str, Any]:
    try:
        usage = read_json(folder / USAGE)
        return usage if isinstance(usage, dict) else {}
    except (OSError, ValueError):
        return {}


def parse_size(text: str) -> int:
    """``"500MB"``, ``"5GB"``, ``"2.5G"``, ``"1000000"`` (bytes) as bytes."""
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)B?\s*", str(text).upper())
    if not match:
        raise ConfigError(f"a cache size must look like 500MB, 5GB or a number of bytes; got {text!r}")
    return int(float(match.group(1)) * 1000 ** " KMGT".index(match.group(2) or " "))


def cache_limit() -> int:
    """The size the cache is trimmed to after a run: ``$GRAFT_CACHE_LIMIT`` or 5 GB."""
    return parse_size(os.environ.get("GRAFT_CACHE_LIMIT") or DEFAULT_LIMIT)


def prune_cache(
    root: str | os.PathLike | None = None,
    max_bytes: int | None = None,
    older_than_days: float | None = None,
    keep: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Delete namespaces, least recently used first, until the cache holds at most ``max_bytes``, and every
    namespace unused for ``older_than_days``; never those in ``keep``. Returns what was deleted. Runs after
    every run, so it reads only sizes and times; a namespace's key and index are read only if it goes."""
    folder = Path(root) if root is not None else default_cache_dir()
    keep = set(keep)
    entries = sorted(
        (_describe(namespace, details=False) for namespace in _namespaces(folder)), key=lambda e: e["last_used"]
    )
    total, removed = sum(entry["bytes"] for entry in entries), []
    now = time.time()
    for entry in entries:
        if entry["namespace"] in keep:
            continue
        stale = older_than_days is not None and now - entry["last_used"] > older_than_days * 86400
        too_big = max_bytes is not None and total > max_bytes
        if stale or too_big:
            removed.append(_describe(folder / entry["namespace"]))
            shutil.rmtree(folder / entry["namespace"], ignore_errors=True)
            total -= entry["bytes"]
    return removed


def _namespaces(folder: Path) -> list[Path]:
    """The activation namespaces in ``folder`` (the cache folder also holds other kinds of files: wake-word
    clips, images unpacked from arrays; pruning never touches those)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and ((p / KEY).is_file() or (p / INDEX).is_file()))


def _describe(namespace: Path, details: bool = True) -> dict[str, Any]:
    """One namespace: bytes, last use and data; with ``details`` also its key and image count."""
    used = _usage(namespace)
    entry: dict[str, Any] = {
        "namespace": namespace.name,
        "bytes": sum(f.stat().st_size for f in namespace.iterdir() if f.is_file()),
        "data": used.get("data", []),
        "last_used": used.get("last_used") or namespace.stat().st_mtime,
    }
    if details:
        key = read_json(namespace / KEY) if (namespace / KEY).is_file() else {}
        index = read_json(namespace / INDEX) if (namespace / INDEX).is_file() else {}
        entry.update(
            architecture=key.get("architecture"), stop=key.get("stop"), view=key.get("view"), images=len(index)
        )
    return entry


def cache_usage(root: str | os.PathLike | None = None) -> dict[str, Any]:
    """What is in the cache folder: namespaces with their key, image count, bytes, data and last use."""
    folder = Path(root) if root is not None else default_cache_dir()
    entries = [_describe(namespace) for namespace in _namespaces(folder)]
    return {"cache_dir": str(folder), "bytes": sum(e["bytes"] for e in entries), "namespaces": entries}


def clear_cache(root: str | os.PathLike | None = None) -> int:
    """Delete the cache folder's namespaces and what the check pass remembers of files (``checked/``); returns
    the bytes freed."""
    usage = cache_usage(root)
    for entry in usage["namespaces"]:
        shutil.rmtree(Path(usage["cache_dir"]) / entry["namespace"], ignore_errors=True)
    checked = Path(usage["cache_dir"]) / "checked"
    remembered = sum(f.stat().st_size for f in checked.glob("*.json")) if checked.is_dir() else 0
    shutil.rmtree(checked, ignore_errors=True)
    return usage["bytes"] + remembered


def resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder to use, created and checked writable (a clear error, not a failure mid-run)."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test"):
            pass
    except OSError as error:
        raise ConfigError(
            f"cannot write to the activation cache folder '{folder}': {error.strerror or error}",
            hint="pass --cache-dir DIR (or set GRAFT_CACHE_DIR), or --no-cache",
        ) from None
    return folder
