"""Shared fixtures: the real VOC 2007 and COCO samples, tiny-model params, stage runs in a temp
folder, and a local HTTP server."""

from __future__ import annotations

import contextlib
import copy
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from repro.config import config_from_dict
from tests import faulty_voc

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


def committed_params_text() -> str:
    """params.yaml as committed, so that experiments a user ran in the workspace (which
    rewrite params.yaml) do not change what the tests run with."""
    result = subprocess.run(
        ["git", "show", "HEAD:params.yaml"], cwd=PROJECT, capture_output=True, text=True
    )
    return result.stdout if result.returncode == 0 else (PROJECT / "params.yaml").read_text()


def project_params(**overrides) -> dict:
    """The committed params.yaml with the tiny settings and `overrides` merged in."""
    params = yaml.safe_load(committed_params_text())
    return merge(merge(params, TINY_PARAMS), overrides)


def venv_env(**extra: str) -> dict[str, str]:
    """os.environ with this interpreter's folder first on PATH.

    DVC runs each stage's `python -m repro.<stage>` through PATH, so without this a test run
    as `.venv/bin/python -m pytest` outside an activated virtualenv would start the system
    Python.
    """
    path = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), os.environ.get("PATH")]))
    return dict(os.environ, PATH=path, **extra)


def require_voc_sample() -> Path:
    """Return the VOC 2007 sample folder; skip the test (or fail it on CI) when it is missing."""
    if not (VOC_SAMPLE / "JPEGImages").is_dir():
        if os.environ.get("REPRO_REQUIRE_SAMPLE"):
            pytest.fail(f"the VOC 2007 sample is required but missing at {VOC_SAMPLE}")
        pytest.skip(f"VOC 2007 sample not found at {VOC_SAMPLE}; set REPRO_VOC_SAMPLE")
    return VOC_SAMPLE


@pytest.fixture
def voc_sample() -> Path:
    return require_voc_sample()


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


def stage_env(**extra: str) -> dict[str, str]:
    """Environment for a `python -m repro.<stage>` subprocess that imports this checkout."""
    env = venv_env(**extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def inside(folder: Path, **environment: str) -> Iterator[None]:
    """Run the block with `folder` as the cwd and `environment` added to os.environ."""
    saved_cwd = Path.cwd()
    saved_env = {name: os.environ.get(name) for name in environment}
    os.chdir(folder)
    os.environ.update(environment)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_stages(folder: Path, names: list[str], **environment: str) -> None:
    """Run pipeline stages in this process through `repro.stage.run`, as `python -m` does."""
    from repro import ablate, aggregate, embed, evaluate, prepare, report, stage, tiling, train

    bodies = {
        "prepare": prepare.prepare,
        "tile": tiling.tile,
        "embed": embed.embed,
        "aggregate": aggregate.aggregate,
        "ablate": ablate.ablate,
        "train": train.train,
        "evaluate": evaluate.evaluate,
        "report": report.report,
    }
    copy_registry(folder)
    with inside(folder, **environment):
        for name in names:
            stage.run(name, bodies[name])


def copy_registry(folder: Path) -> None:
    """Copy experiments/ (claims, sweeps, paper setting) and results/experiments.json, which
    the report stage reads, into a temp project folder."""
    if not (folder / "experiments").exists():
        shutil.copytree(
            PROJECT / "experiments",
            folder / "experiments",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
    collected = folder / "results" / "experiments.json"
    if not collected.exists():
        collected.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / "results" / "experiments.json", collected)


ALL_STAGES = ["prepare", "tile", "embed", "aggregate", "ablate", "train", "evaluate", "report"]
# Two images per embedding shard cut the faulty dataset's train split into nine shards.
CHAIN_ENV = {"REPRO_EMBED_SHARD_IMAGES": "2"}


@dataclass(frozen=True)
class Chain:
    """A project folder on which every stage ran once, over the faulty VOC dataset."""

    folder: Path
    voc: faulty_voc.FaultyVoc
    params: dict


def chain_params(root: Path) -> dict:
    """Tiny CPU params over the faulty dataset: official splits, bad images skipped.

    The 17 train images make one batch of 16 per epoch (the seventeenth sits out, because a
    batch of one cannot train batch norm), and two epochs give a run something to resume.
    """
    dataset = {
        "root": str(root),
        "holdout": None,
        "max_images": None,
        "on_bad_image": "skip",
    }
    return project_params(
        dataset=dataset,
        clip={"device": "cpu"},
        train={"epochs": 2, "batch_size": 16, "device": "cpu"},
    )


@pytest.fixture(scope="session")
def faulty_dataset(tmp_path_factory) -> faulty_voc.FaultyVoc:
    """The faulty VOC dataset, built once; tests must not change it."""
    sample = require_voc_sample()
    return faulty_voc.build(tmp_path_factory.mktemp("faulty") / "VOC2007", sample)


@pytest.fixture(scope="session")
def faulty_chain(faulty_dataset, tmp_path_factory) -> Chain:
    """Run prepare to report once on the faulty dataset; tests copy the folder to change it."""
    voc = faulty_dataset
    folder = tmp_path_factory.mktemp("chain")
    params = chain_params(voc.root)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run_stages(folder, ALL_STAGES, **CHAIN_ENV)
    return Chain(folder, voc, params)


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves files from `root`, honouring `Range: bytes=N-` unless `ranges` is off.

    With `drop_after` set, a response announces its full length but the connection closes
    after that many body bytes.
    """

    root: Path
    ranges = True
    drop_after: int | None = None
    seen_ranges: list
    requests: list

    def do_GET(self):
        self.requests.append(self.path)
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
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if self.drop_after is not None:
            body = body[: self.drop_after]
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """A 127.0.0.1 HTTP server; yields (folder it serves, base URL, handler class)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = type("Handler", (RangeHandler,), {"root": root, "seen_ranges": [], "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()
    httpd.server_close()
