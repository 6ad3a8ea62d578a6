"""Crash-safe file writing and content hashing.

Every file graft writes goes through :func:`atomic_write_bytes`: written to a temporary file in the
same folder, flushed to disk, then renamed over the target. A killed process leaves either the old
file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_save_tensors", "read_json", "sha256_file", "load_tensors"]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash never leaves a partial file."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would give (mkstemp's 0600 would make some files private)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))


def atomic_save_tensors(
    path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save tensors as safetensors, atomically. Tensors are made contiguous CPU copies first."""
    from safetensors.torch import save  # torch loads only when tensors are written: data checks stay light

    plain = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    atomic_write_bytes(path, save(plain, metadata=metadata))


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path), device="cpu")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


class KnownDigests:
    """A mixin for datasets with a ``sha256`` dict (path -> content hash, from their scan)."""

    sha256: dict[str, str]

    def digest(self, path: str) -> str:
        """The sha256 of a file's bytes (from the scan, or computed now when the scan did not inspect)."""
        if path not in self.sha256:
            self.sha256[path] = sha256_file(path)
        return self.sha256[path]


def default_cache_dir() -> Path:
    """Where graft keeps what it can compute again (activations, checked files, generated clips) unless told
    otherwise: ``$GRAFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/graft`` or ``~/.cache/graft``."""
    if os.environ.get("GRAFT_CACHE_DIR"):
        return Path(os.environ["GRAFT_CACHE_DIR"])
    base = Path(os.environ["XDG_CACHE_HOME"]) if os.environ.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "graft"
