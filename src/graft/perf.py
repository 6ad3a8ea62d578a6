"""Process set-up that makes PyTorch fast on a small CPU, and how many cores there are to use.

glibc's default allocator returns large freed blocks to the OS and maps them again on the next
batch; on a 2-core machine over half the CPU time went to those page faults. Raising the mmap
and trim thresholds keeps the memory in the process (3x faster EfficientNet-Lite0 inference here,
see BENCHMARKS.md). The ``graft`` command sets them with ``mallopt`` as it starts (before torch is
imported), and puts the equivalent ``MALLOC_*_`` variables in its environment for the processes it
starts; set ``GRAFT_ALLOCATOR=system`` to opt out. Library users can set the same variables in their
shell (``graft env`` prints them). Earlier versions re-executed the command with the variables set,
which started Python and imported the command line twice.

When a command has finished, the ``graft`` command ends its process without the interpreter's
teardown (:func:`exit_without_teardown`): unloading torch, timm and matplotlib module by module took
1.7 s after every run, output already written.

Small scikit-learn fits (importance weights, a domain classifier) run on one BLAS thread
(:func:`one_blas_thread`): OpenBLAS's threads cost more than they share on a few thousand rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import sys
from collections.abc import Iterator

ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
OPT_OUT = "GRAFT_ALLOCATOR"
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters, from glibc's malloc.h


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS tells; else all of them), shared
    with the other processes of the same run on this machine (torchrun's LOCAL_WORLD_SIZE)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        sharing = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        sharing = 1
    return max(1, cores // sharing)


def allocator_tuned(environ: dict[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return all(key in environ for key in ALLOCATOR_ENV)


def should_tune(environ: dict[str, str] | None = None) -> bool:
    """True on glibc Linux when the thresholds are unset and the user has not opted out."""
    environ = os.environ if environ is None else environ
    return (
        sys.platform.startswith("linux")
        and platform.libc_ver()[0] == "glibc"
        and not allocator_tuned(environ)
        and environ.get(OPT_OUT, "") != "system"
    )


def tune_allocator() -> bool:
    """Set the thresholds in this process (``mallopt``) and in its environment (for the processes it starts).
    Returns whether ``mallopt`` took them; where it did not, nothing is changed."""
    libc = ctypes.CDLL(None)
    # mallopt takes an int: the largest trim threshold it accepts (2 GiB) keeps freed memory as well as 100 GB does
    taken = libc.mallopt(M_MMAP_THRESHOLD, int(ALLOCATOR_ENV["MALLOC_MMAP_THRESHOLD_"])) == 1
    taken = taken and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    if taken:
        os.environ.update(ALLOCATOR_ENV)
    return taken


class Command:
    """Whether this process is the ``graft`` command (set by its entry point): only then is the process's age
    at the start of a run the command's start-up."""

    running = False


def startup_seconds() -> float | None:
    """Seconds since the ``graft`` command started (Python, then importing torch and graft); None inside another
    program (a notebook, a test), or where the OS does not tell a process's age (``/proc`` is Linux's)."""
    return process_seconds() if Command.running else None


def process_seconds() -> float | None:
    """Seconds since this process started; None where the OS does not say."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rpartition(")")[2].split()[19])  # field 22: start time, after the name
            return float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def exit_without_teardown(code: object) -> None:
    """End the process now with ``code`` (what ``SystemExit`` carries), its output flushed. Every file
    graft writes is closed and renamed into place before a command returns; what is skipped is the
    interpreter's freeing of every module and object. Does not return."""
    if code is not None and not isinstance(code, int):
        print(code, file=sys.stderr)
        code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said
            pass
    os._exit(code or 0)


def cpu_description() -> dict:
    """The CPU's name, cores and the vector-instruction flags that decide torch's and ONNX Runtime's kernels
    (what a speed measured on this machine depends on)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            lines = cpuinfo.read().splitlines()
        for line in lines:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                name = value.strip()
            elif key.strip() in ("flags", "Features"):
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "asimd", "sve")
    return {"name": name, "cores": os.cpu_count(), "flags": sorted(flag for flag in wanted if flag in flags)}


@contextlib.contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch's intra-op threads set to ``threads`` inside the block, restored after it."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Numpy's and scipy's BLAS on one thread inside the block. Measured on 2 cores: a logistic regression on
    1,200 x 1,280 features took 0.76 s on one thread and 2.8 s on two; on 24 rows 0.10 s against 0.90 s."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, user_api="blas"):
        yield
