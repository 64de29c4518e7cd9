"""How a stage process ends: bad input as one `error:` line, a bug as its traceback alone, both exit status 1."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STAGE = """
import sys
from dulwich.repo import Repo
from pipeline import cli
from pipeline.errors import PipelineError

def main(argv):
    repo = Repo(sys.argv[1])  # git objects read from a pack, as DVC and DVCLive do in every stage that uses them
    repo[repo.head()]
    raise {error}

cli.run(main)
"""


def packed_git_repo(path: Path) -> Path:
    git = ["git", "-C", str(path), "-c", "user.name=t", "-c", "user.email=t@t"]
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "f").write_text("x")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    subprocess.run([*git, "gc", "-q"], check=True)  # into a pack file, as a clone has them
    assert list((path / ".git" / "objects" / "pack").glob("*.pack"))
    return path


def run(tmp_path: Path, error: str) -> subprocess.CompletedProcess:
    repo = packed_git_repo(tmp_path / "repo")
    return subprocess.run([sys.executable, "-c", STAGE.format(error=error), str(repo)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)  # fmt: skip


def test_a_bug_shows_its_own_traceback_and_no_shutdown_noise(tmp_path):
    result = run(tmp_path, "RuntimeError('a bug')")
    assert result.returncode == 1
    assert result.stderr.startswith("Traceback (most recent call last):")
    assert result.stderr.rstrip().endswith("RuntimeError: a bug")  # dulwich's Pack.__del__ adds nothing after it
    assert "Exception ignored" not in result.stderr and "sys.meta_path is None" not in result.stderr


def test_bad_input_is_one_error_line(tmp_path):
    result = run(tmp_path, "PipelineError('params.yaml:train:lr must be > 0, got -1.')")
    assert result.returncode == 1
    assert result.stderr == "error: params.yaml:train:lr must be > 0, got -1.\n"
