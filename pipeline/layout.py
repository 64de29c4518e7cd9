"""Where one backbone's files lie inside the folders dvc.yaml passes to the stages (its outs spell the same).

dvc.yaml passes folders, never paths built from backbone names, so that no value of params.yaml is pasted
into the shell command DVC runs; `tests/test_stages.py` checks that the outs DVC renders are these paths.
"""

from __future__ import annotations

from pathlib import Path


def fold_file(folder: Path, backbone: str, fold: int, suffix: str) -> Path:
    """`<folder>/<backbone>/fold<k><suffix>`: a train stage's checkpoint or OOF logits; `suffix=""`: its log folder."""
    return Path(folder) / backbone / f"fold{fold}{suffix}"


def backbone_file(folder: Path, backbone: str, suffix: str) -> Path:
    """`<folder>/<backbone><suffix>`: a predict stage's test logits; `suffix=""`: a features stage's folder."""
    return Path(folder) / f"{backbone}{suffix}"
