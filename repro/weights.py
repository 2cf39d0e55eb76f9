"""Stage weights: a fingerprint of each local weight file that the params name.

DVC tracks `clip.pretrained` and `train.weights` only as strings. A checkpoint replaced under
the same path would leave embed or train looking unchanged, and DVC's run cache could even
restore outputs computed from the old file. This stage runs on every `dvc repro` (it is
`always_changed` in dvc.yaml) and writes the SHA-256 of each weight file into a small JSON
file. Embed and train depend on that file, so new bytes re-run them, and DVC restores no
outputs that other bytes produced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

from repro import io, paths
from repro.config import RANDOM_WEIGHTS, Config, ConfigError, load_config
from repro.logs import setup_logging

log = logging.getLogger(__name__)

# SHA-256 of files already hashed, under their path, size and modification time, the same
# shortcut DVC takes for its own outputs. A 1.3 GB checkpoint takes a few seconds to hash.
HASHES = Path(".repro-tmp/weight-hashes.json")
KEEP_HASHES = 50


def file_sha256(path: Path) -> str:
    """Return the SHA-256 of `path`, reusing the hash of an unchanged file."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    try:
        known = json.loads(HASHES.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]

    log.info("hashing %s", path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    known[key] = digest.hexdigest()
    try:
        io.write_json(HASHES, dict(list(known.items())[-KEEP_HASHES:]))
    except OSError:
        pass  # a read-only project only loses the shortcut
    return known[key]


def fingerprint(spec: str, keywords: tuple[str, ...], base: Path) -> dict:
    """Describe the weights that `spec` names: a keyword or tag as given, a file by its hash."""
    path = Path(spec) if os.path.isabs(spec) else base / spec
    if spec in keywords or not path.is_file():
        return {"weights": spec}
    return {"weights": spec, "bytes": path.stat().st_size, "sha256": file_sha256(path)}


def weights(config: Config, base: Path | None = None) -> None:
    """Write the fingerprints of CLIP's and the classifier's weights."""
    base = Path.cwd() if base is None else base
    clip = fingerprint(config.clip.pretrained, (RANDOM_WEIGHTS,), base)
    classifier = fingerprint(config.train.weights, ("imagenet", "none"), base)
    io.write_json(paths.CLIP_WEIGHTS, clip)
    io.write_json(paths.CLASSIFIER_WEIGHTS, classifier)


def main() -> None:
    # The stage runs in every `dvc repro`, so it avoids repro.stage, which imports torch.
    setup_logging()
    try:
        weights(load_config())
    except (ConfigError, OSError) as error:
        log.error("weights failed: %s", error)
        sys.exit(2 if isinstance(error, ConfigError) else 1)


if __name__ == "__main__":
    main()
