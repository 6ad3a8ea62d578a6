"""The loop alone, before and after the one-loop refactor: 10 epochs of a linear head on 8,000 random
cached rows (1,280 features), validation on 2,000. ``python bench/fit_loop_ab.py`` times this checkout;
``PYTHONPATH=OLD/src python bench/fit_loop_ab.py --old`` times a checkout from before graft.core
(7f0f031, where the loop was graft.training.fit)."""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import torch
from torch import nn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old", action="store_true", help="the loop of a checkout from before graft.core")
    old = parser.parse_args().old
    if old:
        from graft.freeze import FreezePlan
        from graft.model import TransferModel
        from graft.training import fit
    else:
        from graft.core.fit import fit
        from graft.core.freeze import FreezePlan
        from graft.core.model import TransferModel
        from graft.core.objectives import Classification
    torch.manual_seed(0)
    rows, labels = torch.randn(8000, 1280), torch.randint(0, 10, (8000,))
    train = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(rows, labels),
        batch_size=32,
        shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )
    valid = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(2000, 1280), torch.randint(0, 10, (2000,))), batch_size=32
    )
    model = TransferModel(OrderedDict(frozen=nn.Identity()), nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 10)), 1280)
    plan = FreezePlan(stages=("frozen",), trainable_from=1, lr=1e-3, bn_policy="frozen")
    began = time.perf_counter()
    if old:
        fit(model, plan, train, valid, epochs=10, start=1)
    else:
        fit(model, Classification(), plan, train, valid, epochs=10, start=1)
    print(f"{'before' if old else 'after'}: {time.perf_counter() - began:.2f} s")


if __name__ == "__main__":
    main()
