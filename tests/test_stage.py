"""Messages of the errors that stop a stage."""

import pandas as pd
import pytest

from repro.stage import describe


def test_missing_file_from_open_named(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        open(tmp_path / "index.parquet")
    message = describe(caught.value)
    assert message.startswith(f"{tmp_path / 'index.parquet'} not found")
    assert "Run `dvc repro`" in message


def test_missing_file_from_pandas_named(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        pd.read_parquet(tmp_path / "tiles.parquet")
    assert describe(caught.value).startswith(f"{tmp_path / 'tiles.parquet'} not found")


def test_other_error_message_kept():
    assert describe(ValueError("threshold = 2.0 is out of range")) == (
        "threshold = 2.0 is out of range"
    )
