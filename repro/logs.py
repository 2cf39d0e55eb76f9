"""Logging set-up shared by the stage entry points."""

import logging
import os
import sys


def setup_logging() -> None:
    """Log to stderr at the level in REPRO_LOG_LEVEL (INFO by default), with time and logger."""
    level = os.environ.get("REPRO_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
