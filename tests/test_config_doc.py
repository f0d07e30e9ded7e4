"""docs/CONFIG.md documents every config key and is generated from the dataclasses."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from training.config import Config
from training.config_doc import attribute_docs, markdown, undocumented_fields

REPO = Path(__file__).resolve().parents[1]


def _dataclasses(cls: type) -> list[type]:
    found = [cls]
    for annotation in typing.get_type_hints(cls).values():
        if dataclasses.is_dataclass(annotation):
            found += _dataclasses(annotation)
    return found


def test_every_field_of_every_config_dataclass_is_documented() -> None:
    assert undocumented_fields() == []
    for cls in _dataclasses(Config):
        documented = attribute_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in documented]
        assert not missing, f"{cls.__name__}: no Attributes entry for {missing}"


def test_config_reference_is_up_to_date() -> None:
    written = (REPO / "docs" / "CONFIG.md").read_text()
    assert written == markdown(), "regenerate: python -m training.config_doc > docs/CONFIG.md"
    assert "`train.max_time`" in written and "minutes" in written


def test_help_lists_every_key(capsys) -> None:
    import pytest

    from training.config_doc import _rows
    from training.train_cli import main

    with pytest.raises(SystemExit) as stop:
        main(["--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    for key, *_ in _rows(Config, ""):
        assert f"  {key} = " in text, key
