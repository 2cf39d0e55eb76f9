"""Common entry point of the pipeline stages: logging, config, clean errors, wall time."""

from __future__ import annotations

import logging
import os
import platform
import resource
import sys
import time
from collections.abc import Callable

import torch

from repro import io, paths
from repro.clip_cache import CacheError
from repro.clip_model import UnsafeCheckpointError, WeightsUnavailableError
from repro.config import Config, ConfigError, load_config
from repro.datasets import DatasetError
from repro.download import DiskSpaceError, DownloadError, UnsafeArchiveError
from repro.images import BadImageError
from repro.logs import setup_logging

log = logging.getLogger(__name__)

# Errors whose message already states what failed and what to do, so no traceback is shown.
USER_ERRORS = (
    ConfigError,
    DatasetError,
    BadImageError,
    DownloadError,
    UnsafeArchiveError,
    DiskSpaceError,
    WeightsUnavailableError,
    UnsafeCheckpointError,
    CacheError,
    FileNotFoundError,
)


def cpu_model() -> str:
    """Return the processor's model name from /proc/cpuinfo, else from `platform`."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """Describe where a stage ran, for the cost table and the report's provenance."""
    info = {
        "host": platform.node(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux: VmHWM of /proc/self/status. Not ru_maxrss, because Linux carries the parent's
    peak over into ru_maxrss when a forked process starts a new program, so a stage started
    by a large process (DVC, a test) would report that process's peak. Child processes are
    left out: a forked DataLoader worker shares its parent's pages.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)  # the value is in kB
    except (OSError, ValueError, IndexError):
        pass
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    scale = 1024 * 1024 if sys.platform == "darwin" else 1024
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale, 1)


def cpu_seconds() -> float:
    """User plus system CPU time of this process and its finished children."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def describe(error: Exception) -> str:
    """Return the message for a user error, which for a missing file names the fix."""
    if not isinstance(error, FileNotFoundError):
        return str(error)
    # open() fills `filename`; pandas and pyarrow pass only the path as the message.
    path = error.filename or (error.args[0] if len(error.args) == 1 else str(error))
    return (
        f"{path} not found: a stage before this one has not run or did not finish. "
        "Run `dvc repro`, which runs the missing stages first."
    )


def run(name: str, body: Callable[[Config], dict | None]) -> None:
    """Load and check the config, run `body`, and record the stage's cost.

    results/timing/<name>.json holds, in this order: stage, wall_s (config check and body,
    without the interpreter's start and imports), cpu_s (user + system CPU seconds of this
    process and its finished children over the same span), peak_rss_mb (peak resident
    memory of this process since it started, in MiB), then the figures that `body` returns
    (embed's are listed in `repro.embed.embed`), then machine (host, cpu, cpus, threads,
    torch, and gpu where CUDA is available). Under `torchrun` only rank 0 writes it.
    """
    setup_logging()
    started = time.perf_counter()
    cpu_started = cpu_seconds()
    try:
        config = load_config()
        extra = body(config) or {}
    except USER_ERRORS as error:
        log.error("%s failed: %s", name, describe(error))
        sys.exit(2 if isinstance(error, ConfigError) else 1)
    except KeyboardInterrupt:
        log.error(
            "%s interrupted: no output was half written. Run `dvc repro` to continue "
            "(embed and train resume from their last shard or epoch).",
            name,
        )
        sys.exit(130)  # the shell's exit status for a process ended by SIGINT

    wall = time.perf_counter() - started
    if int(os.environ.get("RANK", 0)) != 0:
        return
    log.info("%s finished in %.1f s", name, wall)
    figures = {
        "stage": name,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu_seconds() - cpu_started, 3),
        "peak_rss_mb": peak_rss_mb(),
    }
    io.write_json(paths.STAGE_TIMES / f"{name}.json", {**figures, **extra, "machine": machine()})
