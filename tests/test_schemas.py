"""Every contract file the CLI writes validates against the JSON Schema that ships with graphopt."""
import json

import jsonschema
import pytest

from graphopt import schemas
from graphopt.cli.main import main


def _written(tmp_path, argv: list[str], name: str) -> dict:
    out = tmp_path / "out"
    assert main(argv + ["-o", str(out), "-q"]) == 0
    return json.loads((out / name).read_text())


@pytest.mark.parametrize("argv,name", [
    (["partition", "zoo:mlp", "-k", "2"], "partition.json"),
    (["partition", "zoo:gpt", "-k", "3", "--mode", "cut"], "partition.json"),
    (["fuse", "zoo:gpt"], "fusion.json"),
    (["remat", "zoo:mlp", "--budget", "0.8", "--train"], "memory.json"),
    (["remat", "zoo:mlp", "--budget", "1.0"], "memory.json"),
])
def test_cli_files_validate(tmp_path, argv, name):
    doc = _written(tmp_path, argv, name)
    schemas.validate(doc)
    assert doc["schema"] == f"graphopt.{name.split('.')[0]}/1"


def test_every_schema_is_a_valid_schema():
    for name in schemas.NAMES:
        jsonschema.Draft202012Validator.check_schema(schemas.load(name))


def test_a_broken_partition_is_rejected(tmp_path):
    doc = _written(tmp_path, ["partition", "zoo:mlp", "-k", "2"], "partition.json")
    doc["nodes"][0]["part"] = -1
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(doc)
    del doc["summary"]
    with pytest.raises(jsonschema.ValidationError):
        schemas.validate(doc)
