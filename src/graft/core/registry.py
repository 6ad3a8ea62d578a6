"""Registries of plug-ins named by ``"module:attribute"`` strings and imported on first use (like
Hugging Face's auto-class mappings), so a registry depends on none of what it lists: run kinds
(:mod:`graft.core.runs`) and modalities (:mod:`graft.core.modality`)."""

from __future__ import annotations

import importlib
from typing import Any

from graft.errors import GraftError


class Registry:
    """``name -> "module:attribute"``, in order; ``get`` imports on first use."""

    def __init__(self, what: str, error: type[GraftError], entries: dict[str, str]):
        self.what, self.error = what, error
        self.entries = dict(entries)

    def register(self, name: str, where: str, *, first: bool = False) -> None:
        """Add (or replace) ``name``; ``first`` puts it before the others (asked first when they are tried in order)."""
        entries = {k: v for k, v in self.entries.items() if k != name}
        self.entries = {name: where, **entries} if first else {**entries, name: where}

    def unregister(self, name: str) -> None:
        self.entries.pop(name, None)

    def names(self) -> list[str]:
        return list(self.entries)

    def get(self, name: str) -> Any:
        if name not in self.entries:
            raise self.error(
                f"unknown {self.what} '{name}' (this graft knows {', '.join(sorted(self.entries))})",
                hint="was the run written by a newer graft, or with a plug-in that is not installed?",
            )
        module, _, attribute = self.entries[name].partition(":")
        return getattr(importlib.import_module(module), attribute)
