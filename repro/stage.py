"""Common entry point of the pipeline stages: logging, config, clean errors, wall time."""

from __future__ import annotations

import logging
import os
import platform
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

log = logging.getLogger(__name__)

# Errors whose message already says what failed and what to do: shown without a traceback.
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


def setup_logging() -> None:
    level = os.environ.get("REPRO_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def machine() -> dict:
    """Describe where a stage ran, for the cost table and the report's provenance."""
    info = {"host": platform.node(), "cpus": os.cpu_count(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run(name: str, body: Callable[[Config], dict | None]) -> None:
    """Load and check the config, run `body`, and record the stage's wall time.

    `body` may return a dict of extra cost figures (views per second, device), which is
    written with the wall time to results/timing/<name>.json.
    """
    setup_logging()
    started = time.perf_counter()
    try:
        config = load_config()
        extra = body(config) or {}
    except USER_ERRORS as error:
        log.error("%s failed: %s", name, error)
        sys.exit(2 if isinstance(error, ConfigError) else 1)

    wall = time.perf_counter() - started
    log.info("%s finished in %.1f s", name, wall)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    io.write_json(
        paths.STAGE_TIMES / f"{name}.json",
        {"stage": name, "wall_s": round(wall, 3), **extra, "machine": machine()},
    )
