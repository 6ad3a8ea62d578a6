"""Process set-up that makes PyTorch fast on a small CPU, and how many cores there are to use.

glibc's default allocator returns large freed blocks to the OS and maps them again on the next
batch; on a 2-core machine over half the CPU time went to those page faults. Raising the mmap
and trim thresholds keeps the memory in the process (3x faster EfficientNet-Lite0 inference here,
see BENCHMARKS.md). The thresholds must be set before the allocator first runs, so the ``graft``
command re-executes itself once with them in the environment; set ``GRAFT_ALLOCATOR=system`` to
opt out. Library users can set the same variables in their shell (``graft env`` prints them).

When a command has finished, the ``graft`` command ends its process without the interpreter's
teardown (:func:`exit_without_teardown`): unloading torch, timm and matplotlib module by module took
1.7 s after every run, output already written.
"""

from __future__ import annotations

import os
import platform
import sys

ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": "1000000000", "MALLOC_TRIM_THRESHOLD_": "100000000000"}
OPT_OUT = "GRAFT_ALLOCATOR"


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, where the OS tells; else all of them)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def allocator_tuned(environ: dict[str, str] | None = None) -> bool:
    environ = os.environ if environ is None else environ
    return all(key in environ for key in ALLOCATOR_ENV)


def should_reexec(environ: dict[str, str] | None = None) -> bool:
    """True on glibc Linux when the thresholds are unset and the user has not opted out."""
    environ = os.environ if environ is None else environ
    return (
        sys.platform.startswith("linux")
        and platform.libc_ver()[0] == "glibc"
        and not allocator_tuned(environ)
        and environ.get(OPT_OUT, "") != "system"
    )


def reexec_with_tuned_allocator(argv: list[str]) -> None:
    """Replace this process with the same ``graft`` command, allocator thresholds set. Does not return."""
    environ = {**os.environ, **ALLOCATOR_ENV}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "graft", *argv], environ)


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
