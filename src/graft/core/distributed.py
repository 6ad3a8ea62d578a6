"""One run over several processes: torchrun's environment, PyTorch's DistributedDataParallel, rank 0 writes.

``torchrun --nproc_per_node=N -m graft train ...`` (or ``graft train|adapt --nproc N``, which launches it) starts N
copies of the same command. Each finds its place here (:func:`processes`): rank and world size from
torchrun's variables, a process group on gloo (CPU) or nccl (CUDA). Every rank then runs the same code:

- the frozen pass is sharded: each rank computes its share of the rows the activation cache lacks, then all
  wait for the others (:meth:`Processes.barrier`) and read the complete cache;
- every training batch of ``--batch-size`` rows is split between the ranks (:meth:`Processes.part`), and
  DistributedDataParallel averages their gradients; each rank's loss is its rows' sum over the whole batch's
  count (:meth:`Processes.batch_mean`), so the average is the single process's gradient of the whole batch,
  even for a last batch that does not split evenly: the maths is the single-process run's (float rounding
  aside);
- every rank validates on the whole validation split, and the epoch's record (losses, scores, seconds) is
  rank 0's (:meth:`Processes.from_main`), so every rank takes the same best-epoch and stopping decisions;
- only rank 0 writes the run folder, shows progress, evaluates the result and writes the report; the others
  work in a scratch folder deleted at the end and stop once training ends.

The DDP wrapper is built for each phase of the freeze plan (head first, then the unfrozen stages), after
``requires_grad`` is set: DDP registers the parameters that train when it is built, so a frozen parameter
never waits for a gradient (pytorch #43259, #43690). Only a run whose objective can leave some outputs out of
a batch's loss (a multi-domain head with no row in a rank's share) asks DDP to look for unused parameters; the
objective's own parameters (task weights) are averaged over the ranks by hand (:meth:`Processes.average_gradients`).

What is not a mean over rows is computed on the whole batch on every rank, so with DDP's averaging the step is
the single process's: a loss term such as a covariance or a class-confusion matrix (:meth:`Processes.gather`
brings every rank's rows together and sends each rank back the gradient of its own rows), and the statistics
of BatchNorm layers that train (:mod:`graft.core.whole_batch_norm`: torch's SyncBatchNorm runs only on GPUs).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from graft.core.whole_batch_norm import whole_batch_norms
from graft.errors import ConfigError
from graft.perf import usable_cores


@dataclass(frozen=True)
class Processes:
    """This process's place among the run's processes (a single process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def part(self, batch: Sequence) -> list:
        """This rank's share of one batch: every ``world``-th row from its rank on (a rank whose share would be
        empty, in a last batch smaller than the world, takes the batch's first row: DDP needs every rank to step)."""
        share = list(batch[self.rank :: self.world])
        return share or list(batch[:1])

    def share(self, items: Sequence) -> list:
        """This rank's share of work split once (the rows of the frozen pass)."""
        return list(items[self.rank :: self.world])

    def total(self, values: dict[str, float]) -> dict[str, float]:
        """``values`` summed over the ranks (every rank gets the sums)."""
        if not self.distributed or not values:
            return values
        names = sorted(values)
        # nccl (GPUs) reduces only tensors on the GPU, gloo those in memory
        device = (
            torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else None
        )
        sums = torch.tensor([float(values[name]) for name in names], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(sums)
        return dict(zip(names, sums.tolist()))

    def batch_means(self, sums: dict[str, torch.Tensor], rows: dict[str, float]) -> dict[str, torch.Tensor]:
        """Each ``sums[name]`` (a loss summed over this rank's ``rows[name]``) as the whole batch's mean, scaled
        so that DDP's average of the ranks' gradients is that mean's gradient, also when the ranks' shares differ
        in size (a last batch that does not split evenly); one all_reduce for all of them. A name with no row in
        the whole batch is left out. One process: ``sums[name] / rows[name]``."""
        if not self.distributed:
            return {name: summed / rows[name] for name, summed in sums.items() if rows[name]}
        totals = self.total(rows)
        return {name: summed * (self.world / totals[name]) for name, summed in sums.items() if totals[name]}

    def batch_mean(self, summed: torch.Tensor, rows: float) -> torch.Tensor:
        """:meth:`batch_means` of one loss (over a batch that has rows)."""
        if not self.distributed:
            return summed / rows
        return self.batch_means({"loss": summed}, {"loss": float(rows)})["loss"]

    def on_main(self, compute: Callable[[], Any]) -> Any:
        """``compute()``'s value, computed by rank 0 alone and given to every rank (it must not wait for the
        other ranks: they are waiting for it)."""
        return self.from_main(compute() if self.is_main else None)

    def from_main(self, value: Any) -> Any:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module, device: torch.device, find_unused: bool = False) -> nn.Module:
        """``model`` as DistributedDataParallel over the parameters that train now (``model`` itself when alone),
        its BatchNorm layers normalising with the whole batch's statistics (:func:`whole_batch_norms`).
        ``find_unused``: a rank's share of a batch may leave parameters out of its loss (a task head when the
        share holds none of that task's labels); DDP then looks for them after each backward pass, at a cost,
        instead of waiting for their gradients forever (pytorch #43259)."""
        if not self.distributed or not any(parameter.requires_grad for parameter in model.parameters()):
            return model
        whole_batch_norms(model)
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)

    def gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Every rank's ``rows`` (same trailing shape, any count) concatenated in rank order, on every rank.
        Backward, each rank's rows get the gradient summed over every rank's loss; DDP then divides by the
        world, so a term every rank computes on the gathered rows trains as it would on the whole batch."""
        if not self.distributed:
            return rows
        return _GatherRows.apply(rows, self.world, self.rank)

    def average_gradients(self, parameters) -> None:
        """Average over the ranks the gradients of parameters DDP does not hold (an objective's task weights),
        as DDP averages the model's: every rank then takes the same step."""
        if not self.distributed:
            return
        for parameter in parameters:
            if parameter.requires_grad:
                if parameter.grad is None:  # this rank's share left it out of the loss: it adds nothing
                    parameter.grad = torch.zeros_like(parameter)
                torch.distributed.all_reduce(parameter.grad)
                parameter.grad /= self.world


class _GatherRows(torch.autograd.Function):
    """all_gather with rows of unequal counts (padded to the largest, then trimmed) and a backward made of one
    all_reduce, which gloo and nccl both have (torch.distributed.nn's backward needs all_to_all or reduce_scatter)."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, world: int, rank: int) -> torch.Tensor:
        counts = [torch.zeros(1, dtype=torch.long, device=rows.device) for _ in range(world)]
        torch.distributed.all_gather(counts, torch.tensor([len(rows)], device=rows.device))
        counts = [int(count) for count in counts]
        padded = rows.new_zeros((max(counts), *rows.shape[1:]))
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in range(world)]
        torch.distributed.all_gather(parts, padded.contiguous())
        ctx.start, ctx.count = sum(counts[:rank]), len(rows)
        return torch.cat([part[:count] for part, count in zip(parts, counts)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        summed = grad.contiguous().clone()
        torch.distributed.all_reduce(summed)
        return summed[ctx.start : ctx.start + ctx.count], None, None


def lost_a_process(error: BaseException, processes: Processes) -> bool:
    """Whether ``error`` says another rank of the run went away (killed, crashed): a collective found its peer
    gone. gloo raises a plain RuntimeError naming its transport; nccl and the store raise torch's DistError."""
    if not processes.distributed:
        return False
    return isinstance(error, torch.distributed.DistError) or "gloo/transport" in str(error)


SINGLE = Processes()
_started: Processes | None = None


def launched_by_torchrun(environ: dict[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return int(environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in environ


def processes(device: torch.device | None = None) -> Processes:
    """This process's :class:`Processes`, joining the process group on first use when torchrun started it."""
    global _started
    if _started is not None:
        return _started
    if not launched_by_torchrun():
        return SINGLE
    if not torch.distributed.is_available():
        raise ConfigError("this torch build has no torch.distributed: run graft in one process")
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    torch.set_num_threads(usable_cores())  # the machine's cores shared between its processes, not each taking all
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if cuda else "gloo")
    _started = Processes(torch.distributed.get_rank(), torch.distributed.get_world_size())
    return _started
