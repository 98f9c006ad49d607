from __future__ import annotations

import json
import subprocess
import sys

import pytest

from satunet import __version__
from satunet.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "satunet", *args], capture_output=True, text=True, timeout=300
    )


def test_version_and_help_in_subprocess():
    out = run_cli("--version")
    assert out.returncode == 0 and __version__ in out.stdout
    out = run_cli("--help")
    assert out.returncode == 0 and "Example" in out.stdout


def test_models_json_in_subprocess():
    out = run_cli("models", "--num-classes", "5", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = {row["name"]: row for row in json.loads(out.stdout)}
    assert rows["unet_base"]["params"] == 31_043_781
    assert rows["unet_skinny"]["study_footprint_mb"] == 1292.25
    assert rows["deeplabv3plus_resnet34"]["study_footprint_mb"] == 872.63
    assert {"name", "params", "gmacs", "study_footprint_mb"} <= set(rows["unet_short"])
    assert rows["unet_skinny"]["gmacs"] < rows["unet_base"]["gmacs"]


def test_models_table_num_classes_8(capsys: pytest.CaptureFixture):
    assert main(["models", "--num-classes", "8", "--size", "256"]) == 0
    out = capsys.readouterr().out
    assert "31,043,976" in out and "8,255,368" in out and "22,439,256" in out


COMMANDS = [
    "models", "data", "train", "evaluate", "reproduce", "benchmark", "search", "predict", "export",
]  # fmt: skip


def test_all_commands_are_registered(capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_help_has_example(command: str, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out.lower() and "satunet " + command in out


def test_help_does_not_import_torch():
    code = (
        "import sys; from satunet.cli import build_parser; build_parser(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_bad_value_is_a_clean_error(capsys: pytest.CaptureFixture):
    assert main(["models", "--num-classes", "0"]) == 2
    assert "error" in capsys.readouterr().err
