"""Shared fixtures: the real VOC 2007 and COCO samples, tiny-model params, stage runs in a temp
folder, and a local HTTP server."""

from __future__ import annotations

import copy
import http.server
import os
import threading
from pathlib import Path

import pytest
import yaml

from repro.config import config_from_dict

PROJECT = Path(__file__).resolve().parents[1]
VOC_SAMPLE = Path(os.environ.get("REPRO_VOC_SAMPLE", PROJECT.parent / "shared/data/voc2007-sample"))
COCO_SAMPLE = Path(
    os.environ.get("REPRO_COCO_SAMPLE", PROJECT.parent / "shared/data/coco2014-sample")
)

# Small settings that keep a whole pipeline run on 2 CPU cores within seconds.
TINY_PARAMS = {
    "dataset": {"root": str(VOC_SAMPLE), "holdout": 0.5, "max_images": 24},
    "clip": {"model": "repro-tiny-ViT", "pretrained": "random", "batch_size": 40, "num_workers": 0},
    "train": {
        "backbone": "resnet18",
        "weights": "none",
        "image_size": 32,
        "epochs": 2,
        "batch_size": 8,
        "num_workers": 0,
        "label_update": {"every": 1},
    },
    "eval": {"batch_size": 16, "num_workers": 0},
}


def merge(base: dict, override: dict) -> dict:
    """Deep-merge `override` into a copy of `base`."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def project_params(**overrides) -> dict:
    """The project's params.yaml with the tiny settings and `overrides` merged in."""
    params = yaml.safe_load((PROJECT / "params.yaml").read_text())
    return merge(merge(params, TINY_PARAMS), overrides)


@pytest.fixture
def voc_sample() -> Path:
    if not (VOC_SAMPLE / "JPEGImages").is_dir():
        if os.environ.get("REPRO_REQUIRE_SAMPLE"):
            pytest.fail(f"the VOC 2007 sample is required but missing at {VOC_SAMPLE}")
        pytest.skip(f"VOC 2007 sample not found at {VOC_SAMPLE}; set REPRO_VOC_SAMPLE")
    return VOC_SAMPLE


@pytest.fixture
def coco_sample() -> Path:
    if not (COCO_SAMPLE / "annotations" / "instances_sample.json").is_file():
        if os.environ.get("REPRO_REQUIRE_SAMPLE"):
            pytest.fail(f"the COCO sample is required but missing at {COCO_SAMPLE}")
        pytest.skip(f"COCO sample not found at {COCO_SAMPLE}; set REPRO_COCO_SAMPLE")
    return COCO_SAMPLE


def params_writer(folder: Path, **defaults):
    """A function that writes tiny params with `defaults` and its overrides into `folder`."""

    def write(**overrides):
        params = project_params(**merge(defaults, overrides))
        (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        return config_from_dict(params, check=True, base=folder)

    write()
    return write


@pytest.fixture
def workdir(tmp_path, monkeypatch, voc_sample):
    """A temp project folder (the cwd) with tiny params; returns a function to rewrite them."""
    monkeypatch.chdir(tmp_path)
    return params_writer(tmp_path)


@pytest.fixture
def project_dir(tmp_path, monkeypatch):
    """An empty temp project folder as the cwd, for tests that bring their own dataset."""
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from `root`, honouring `Range: bytes=N-` unless `ranges` is off."""

    root: Path
    ranges = True
    seen_ranges: list

    def do_GET(self):
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = 0
        header = self.headers.get("Range")
        if header and self.ranges:
            start = int(header.split("=")[1].split("-")[0])
            self.seen_ranges.append(start)
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A 127.0.0.1 HTTP server; yields (folder it serves, base URL, handler class)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (RangeHandler,), {"root": root, "seen_ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()
