"""Every command line of README.md's ```bash blocks runs as written and exits 0.

On a machine without Graphviz: the commands run with a PATH that holds everything the venv's
bin and the system's bin folders hold except ``dot``, so ``--format ...,svg`` takes the path a
user without Graphviz takes. Each runs in one temporary directory (``-o out`` writes there),
in README order, since a later line may read what an earlier one wrote (``plan --device-spec
device.json`` reads what ``calibrate -o device.json`` wrote). The set-up commands (make a venv,
pip install, run the tests) are not run; the quick start's ``graphopt`` command is.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
SETUP = ("python3 -m venv", "pip install", ". .venv/bin/activate", "python -m pytest")
SLOW = ("train", "pipeline", "calibrate", "plan", "hf:")
# the user's own model file that `graphopt inspect my_models.py:build` names
MY_MODELS = textwrap.dedent("""
    import torch

    def build():
        model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(),
                                    torch.nn.Linear(64, 8))
        return model, (torch.randn(4, 32),)
""")


def readme_commands(text: str) -> list[str]:
    """The commands of every ```bash block, comments dropped, set-up steps left out."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            for part in (p.strip() for p in line.split("&&")):
                if part and not part.startswith(SETUP):
                    commands.append(part)
    return commands


COMMANDS = readme_commands(README.read_text())


def test_readme_has_commands_and_every_one_is_graphopt():
    assert len(COMMANDS) >= 10
    assert COMMANDS[0] == "graphopt partition zoo:gpt -k 4 -o out"   # the quick start's
    assert all(c.startswith("graphopt ") for c in COMMANDS), COMMANDS


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The user's directory, and a PATH with no Graphviz on it."""
    work = tmp_path_factory.mktemp("readme")
    (work / "my_models.py").write_text(MY_MODELS)
    path = tmp_path_factory.mktemp("bin-without-dot")
    for folder in (BIN, Path("/usr/local/bin"), Path("/usr/bin"), Path("/bin")):
        if not folder.is_dir():
            continue
        for exe in folder.iterdir():
            target = path / exe.name
            if exe.name != "dot" and not target.exists():
                target.symlink_to(exe)
    env = {**os.environ, "PATH": str(path), "VIRTUAL_ENV": str(BIN.parent)}
    env.pop("PYTHONPATH", None)
    return work, env


def _param(command: str):
    marks = [pytest.mark.slow] if any(word in command for word in SLOW) else []
    return pytest.param(command, marks=marks, id=command[:60])


@pytest.mark.parametrize("command", [_param(c) for c in COMMANDS])
def test_readme_command_runs(workdir, command):
    work, env = workdir
    assert subprocess.run(["which", "dot"], env=env, capture_output=True).returncode != 0
    proc = subprocess.run(shlex.split(command), cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if "--format" in command and "svg" in command:
        # no Graphviz: the SVG is skipped with one line, the rest is written
        assert "skipping svg" in proc.stderr and "dot" in proc.stderr
        assert (work / "out" / "partition.json").exists()
        assert (work / "out" / "partition.html").exists()
        assert (work / "out" / "partition.dot").exists()
