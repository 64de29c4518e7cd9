"""What made each artifact: a small record stored with it, and the one check every reader makes.

A record names the stage that made an artifact (`train@lite0-1`), the settings it read (the params.yaml values
of the keys its dvc.yaml `params:` declares, resolved for its backbone: `config.stage_settings`), its inputs
(the digests of their own records) and facts about the artifact itself (counts, a digest of its content).
Records chain: the digest of a record names the artifact it describes, so a reader can tell whether two of its
inputs were made from the same upstream artifact, and whether what it reads was made with the settings
params.yaml holds now. `expect` refuses anything else with one line naming what differs and the `dvc repro`
target that remakes it: a stage run alone after a settings change, or after another stage was re-run, cannot
mix two runs' artifacts.

Where a record lives (`read_record` finds it):
  a folder (raw/, data/, features/<name>/)      its file `provenance.json`
  a `.npz` of scores (OOF, test logits, probs)  its array `provenance` (`pipeline.scores`)
  a `.safetensors` checkpoint                   the key `provenance` of its metadata (`pipeline.models`)
  a `.json` file (ensemble/weights.json)        its key `provenance`
  a `.csv` (folds.csv, submission.csv)          the file `<stem>.provenance.json` beside it
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_file
from pipeline.config import Config, stage_settings
from pipeline.errors import PipelineError

RECORD_FILE = "provenance.json"
KEY = "provenance"  # the npz array, checkpoint metadata entry and JSON key holding a record
_SHOWN = 3  # differing settings named in one message


class ProvenanceError(PipelineError):
    """An artifact was made by another stage, with other settings, or from other inputs than its reader's."""


@dataclass(frozen=True)
class Record:
    stage: str  # the DVC stage that made the artifact: `extract`, `train@lite0-1`
    settings: dict = field(default_factory=dict)  # dotted params.yaml key -> value it was made with
    inputs: dict = field(default_factory=dict)  # input name -> its record's digest (or a list, one per file)
    facts: dict = field(default_factory=dict)  # counts, content digests, ...

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """Names this record, and so the artifact it describes."""
        return hashlib.blake2b(self.to_json().encode(), digest_size=16).hexdigest()


@dataclass(frozen=True)
class Made:
    """An artifact a reader opened, with its record: what the reader's own record lists among its inputs."""

    path: Path
    record: Record

    @property
    def digest(self) -> str:
        return self.record.digest


def parse_record(text: str, where: Path) -> Record:
    try:
        raw = json.loads(text)
        record = Record(stage=raw["stage"], settings=raw["settings"], inputs=raw["inputs"], facts=raw["facts"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvenanceError(f"{where}: its record of what made it is unreadable ({type(exc).__name__});"
                              " re-run the stage that writes it (`dvc repro -f <stage>`).") from exc  # fmt: skip
    if not isinstance(record.stage, str) or not all(isinstance(x, dict) for x in (record.settings, record.inputs,
                                                                                   record.facts)):  # fmt: skip
        raise ProvenanceError(f"{where}: its record of what made it is malformed; re-run the stage that writes it.")
    return record


def sidecar(path: Path) -> Path:
    """Where a CSV's record lies: `folds.csv` -> `folds.provenance.json`."""
    return Path(path).with_name(f"{Path(path).stem}.{RECORD_FILE}")


def write_record(path: Path, record: Record) -> None:
    """A folder's `provenance.json`, or a CSV's sidecar, atomically. Scores, checkpoints and JSON files embed
    theirs (`pipeline.scores`, `pipeline.models`, `embed`)."""
    path = Path(path)
    target = path / RECORD_FILE if path.is_dir() else sidecar(path)
    with atomic_file(target) as tmp:
        tmp.write_text(record.to_json() + "\n")


def embed(obj: dict, record: Record) -> dict:
    """A JSON document with its record under `provenance`."""
    return {**obj, KEY: json.loads(record.to_json())}


def read_record(path: Path) -> Record:
    """The record of the artifact at `path`, wherever its kind keeps it; ProvenanceError if there is none."""
    path = Path(path)
    if not path.exists():
        raise ProvenanceError(f"{path}: not found; run the stage that writes it (`dvc repro`).")
    try:
        if path.is_dir():
            text = (path / RECORD_FILE).read_text()
        elif path.suffix == ".npz":
            with np.load(path) as npz:
                text = str(npz[KEY]) if KEY in npz.files else None
        elif path.suffix == ".safetensors":
            import safetensors  # no torch needed to read metadata

            with safetensors.safe_open(path, framework="np") as f:  # one metadata entry: safetensors writes
                meta = json.loads((f.metadata() or {}).get("checkpoint", "{}"))  # several in a random order
            text = json.dumps(meta[KEY]) if KEY in meta else None
        elif path.suffix == ".json":
            raw = json.loads(path.read_text())
            text = json.dumps(raw[KEY]) if isinstance(raw, dict) and KEY in raw else None
        else:
            text = sidecar(path).read_text()
    except FileNotFoundError:
        text = None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ProvenanceError(f"{path}: unreadable ({type(exc).__name__}: {exc}); re-run the stage that writes"
                              " it (`dvc repro -f <stage>`).") from exc  # fmt: skip
    if text is None:
        raise ProvenanceError(
            f"{path}: holds no record of what made it (written by hand or by an older version of this pipeline);"
            " re-run the stage that writes it (`dvc repro -f <stage>`)."
        )
    return parse_record(text, path)


def expect(path: Path, stage: str, settings: dict | None = None, inputs: dict | None = None) -> Made:
    """The record of `path`, checked: made by `stage`, with `settings` (each key's value; extra keys in the record
    are fine), from `inputs` (name -> a Made, or a list of them). Raises ProvenanceError naming what differs and
    `dvc repro <stage>`, which remakes it."""
    record = read_record(path)
    rerun = f"run `dvc repro {stage}` (or `dvc repro` for everything)"
    if record.stage != stage:
        raise ProvenanceError(f"{path}: made by {record.stage!r}, not by {stage!r} whose output this stage reads"
                              f" there; {rerun}.")  # fmt: skip
    differ = [key for key, value in (settings or {}).items() if record.settings.get(key, _ABSENT) != value]
    if differ:
        made = ", ".join(f"{key}={_shown(record.settings.get(key, _ABSENT))}" for key in differ[:_SHOWN])
        now = ", ".join(f"{key}={_shown(settings[key])}" for key in differ[:_SHOWN])
        more = f" (and {len(differ) - _SHOWN} more)" if len(differ) > _SHOWN else ""
        raise ProvenanceError(f"{path}: made with {made}{more}, but params.yaml now gives {now}; {rerun}.")
    for name, expected in (inputs or {}).items():
        found = record.inputs.get(name)
        wanted = [m.digest for m in expected] if isinstance(expected, list) else expected.digest
        if found != wanted:
            sources = ", ".join(str(m.path) for m in expected) if isinstance(expected, list) else str(expected.path)
            raise ProvenanceError(
                f"{path}: made from another {name} than the one this stage reads now ({sources}): a stage upstream"
                f" was re-run since; {rerun}."
            )
    return Made(Path(path), record)


def record_of(cfg: Config, stage: str, facts: dict | None = None, **inputs: Made | list[Made]) -> Record:
    """A record of what `stage` makes now: the settings params.yaml gives it, the digests of its `inputs`."""
    digests = {name: [m.digest for m in made] if isinstance(made, list) else made.digest
               for name, made in inputs.items()}  # fmt: skip
    return Record(stage, stage_settings(cfg, stage), digests, facts or {})


def made_by(path: Path, cfg: Config, stage: str, **inputs: Made | list[Made]) -> Made:
    """`expect` that `path` was made by `stage` with the settings params.yaml gives it now, from `inputs`."""
    return expect(path, stage, stage_settings(cfg, stage), inputs)


_ABSENT = object()  # a setting the record does not hold


def _shown(value) -> str:
    if value is _ABSENT:
        return "<not set>"
    return repr(value) if isinstance(value, str) else json.dumps(value)


def arrays_digest(*arrays: np.ndarray) -> str:
    """A hash of the arrays' dtypes, shapes and bytes."""
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
        digest.update(contiguous.data)
    return digest.hexdigest()


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """A hash of a file's bytes, read in 4 MiB chunks (a 715 MB zip: about a second)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
