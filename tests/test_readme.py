"""The README's commands, read from the README itself, are the ones checked: they cannot drift from the code."""

import argparse
import importlib
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.repo_copy import committed_copy, sh

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def shell_commands() -> list[str]:
    """Every command line of the README's ```bash blocks, continuation lines joined, comments and prompts cut."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.DOTALL):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def words_after(command: str, marker: str) -> list[str]:
    words = shlex.split(command)
    return words[words.index(marker) + 1 :]


class _Parsed(Exception):
    pass


def parses(module: str, argv: list[str], monkeypatch) -> argparse.Namespace:
    """The namespace `module`'s main() parses `argv` into; SystemExit(2) if argparse refuses them."""
    real = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        raise _Parsed(real(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    with pytest.raises(_Parsed) as parsed:
        importlib.import_module(module).main(argv)
    return parsed.value.args[0]


STAGE_COMMANDS = [c for c in shell_commands() if "-m stages." in c and "<" not in c]


def test_the_readme_shows_the_stage_commands_a_user_runs():
    modules = {shlex.split(c)[shlex.split(c).index("-m") + 1] for c in STAGE_COMMANDS}
    assert {"stages.submit", "stages.train"} <= modules  # and `make train` (a target) for train_parallel


@pytest.mark.parametrize("command", STAGE_COMMANDS)
def test_every_stage_command_in_the_readme_parses_as_written(command, monkeypatch):
    words = shlex.split(command)
    module = words[words.index("-m") + 1]
    namespace = parses(module, words[words.index("-m") + 2 :], monkeypatch)
    if module == "stages.train":  # the torchrun line: every folder dvc.yaml's train command passes
        dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
        flags = set(re.findall(r"--([a-z-]+)", dvc_yaml["stages"]["train"]["cmd"]))
        assert flags <= {k.replace("_", "-") for k, v in vars(namespace).items() if v is not None}


def test_dvc_config_lines_write_the_local_config():
    lines = [c for c in shell_commands() + re.findall(r"`(dvc config [^`]+)`", README) if c.startswith("dvc config")]
    assert lines and all("--local" in line for line in lines), lines


def test_every_make_target_the_readme_names_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z]+):", makefile, flags=re.MULTILINE))
    named = set(re.findall(r"`make ([a-z]+)", README))
    assert named and named <= targets, named - targets


def test_the_layout_names_every_module_and_stage():
    layout = README.split("## Layout", 1)[1].split("```", 2)[1]
    words = set(re.findall(r"[a-z_0-9]+", layout))
    for folder in ("pipeline", "stages"):
        modules = {p.stem for p in (REPO / folder).glob("*.py") if p.stem != "__init__"}
        assert modules <= words, f"README's Layout lacks {folder}/ {sorted(modules - words)}"


EXP_RUNS = [c for c in shell_commands() if c.startswith("dvc exp run")]


@pytest.mark.e2e
def test_every_dvc_exp_run_in_the_readme_is_accepted_by_dvc_on_the_committed_params(tmp_path):
    """Queued, not run: DVC parses each -S against the real job's params.yaml (a wrong key is "not in struct")."""
    committed = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, capture_output=True, text=True,
                               check=True).stdout  # fmt: skip
    repo = committed_copy(tmp_path / "repo", yaml.safe_load(committed))
    assert EXP_RUNS
    for command in EXP_RUNS:
        sh(repo, *shlex.split(command.replace("dvc exp run", "dvc exp run --queue", 1)))
    queued = sh(repo, "dvc", "queue", "status")
    assert queued.count("Queued") == len(EXP_RUNS), queued
