"""A committed copy of this repo in a temporary folder, and DVC commands run in it (for the end-to-end tests)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def tracked_files() -> list[str]:
    """The repo's files as a fresh clone (plus uncommitted edits) has them: no artifacts of local runs."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )
    return [f for f in listing.stdout.splitlines()
            if (REPO / f).is_file() and (not f.startswith("artifacts/") or f == "artifacts/.gitkeep")]  # fmt: skip


def sh(repo: Path, *cmd: str) -> str:
    result = subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def stages_run(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")]


def committed_copy(repo: Path, params: dict) -> Path:
    """The repo's files (tracked or not ignored) copied to `repo`, `params` as params.yaml, one git commit."""
    for name in tracked_files():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, repo / name)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    sh(repo, "git", "init", "-q")
    sh(repo, "git", "add", "-A")
    git_commit(repo, "tiny")
    return repo


def git_commit(repo: Path, message: str) -> None:
    sh(repo, "git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-aqm", message)


def sh_json(repo: Path, *cmd: str):
    """The JSON a command prints on stdout (DVC's `--json`), its stderr left aside."""
    result = subprocess.run(cmd, cwd=repo, env=ENV, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(result.stdout)
