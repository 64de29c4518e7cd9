"""Get Kaggle's four competition files into one folder, from Kaggle, a local copy, or the embedded sample."""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import zipfile
from pathlib import Path

from pipeline import kaggle_io, sample
from pipeline.atomic import atomic_dir
from pipeline.competition import FILES, ZIP_NAME
from pipeline.config import DataConfig
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)
_SOURCE_STAMP = "source.json"  # which data config produced the folder
_TEMP_PREFIXES = (".download-", ".sample-")  # this stage's temporary folders beside its output


class DownloadError(PipelineError):
    """The competition files could not be fetched, or what was fetched is incomplete."""


def fetch_competition(data: DataConfig, out_dir: Path) -> None:
    """Put train.7z, test.7z, trainLabels.csv and sampleSubmission.csv in `out_dir`, all or nothing.

    A rerun for the same source finds them intact and does nothing (no Kaggle call).
    """
    out_dir = Path(out_dir)
    stamp = json.dumps(dataclasses.asdict(data), sort_keys=True)
    if _already_fetched(out_dir, stamp):
        log.info("%s already holds the competition files from this source; nothing to do", out_dir)
        return
    _remove_stale_temps(out_dir.parent)
    if data.source == "kaggle":
        api = kaggle_io.connect()  # fails before anything is written
        with tempfile.TemporaryDirectory(prefix=_TEMP_PREFIXES[0], dir=_parent(out_dir)) as tmp:
            unpack_competition(kaggle_io.download_competition(api, Path(tmp)), out_dir)
    elif data.source == "local":
        unpack_competition(Path(data.path), out_dir)
    else:
        with tempfile.TemporaryDirectory(prefix=_TEMP_PREFIXES[1], dir=_parent(out_dir)) as tmp:
            zip_path = Path(tmp) / ZIP_NAME
            log.info(
                "writing the embedded sample competition (%d train, %d test images)",
                data.sample.n_train,
                data.sample.n_test,
            )
            sample.write_sample_competition(zip_path, data.sample.n_train, data.sample.n_test, data.sample.seed)
            unpack_competition(zip_path, out_dir)
    (out_dir / _SOURCE_STAMP).write_text(stamp)  # last: its presence means the four files are complete
    log.info("competition files in %s: %s", out_dir, ", ".join(FILES))


def _already_fetched(out_dir: Path, stamp: str) -> bool:
    stamp_path = out_dir / _SOURCE_STAMP
    if not stamp_path.is_file() or stamp_path.read_text() != stamp:
        return False
    return all((out_dir / name).is_file() and (out_dir / name).stat().st_size > 0 for name in FILES)


def unpack_competition(source: Path, out_dir: Path) -> None:
    """Copy Kaggle's four files from `source` (cifar-10.zip as Kaggle ships it, or a folder) into `out_dir`."""
    if not source.exists():
        raise DownloadError(f"{source}: not found; set data.path to Kaggle's {ZIP_NAME} or a folder holding {FILES}.")
    if source.is_dir():
        missing = [name for name in FILES if not (source / name).is_file()]
        if missing:
            raise DownloadError(f"{source}: lacks {', '.join(missing)}; it must hold all of {', '.join(FILES)}.")
        with atomic_dir(out_dir) as tmp:
            for name in FILES:
                shutil.copyfile(source / name, tmp / name)
            _check_non_empty(tmp, source)
        return
    try:
        with zipfile.ZipFile(source) as z:
            missing = [name for name in FILES if name not in z.namelist()]
            if missing:
                raise DownloadError(f"{source}: lacks {', '.join(missing)}; is it Kaggle's {ZIP_NAME}?")
            bad = z.testzip()
            if bad is not None:
                raise DownloadError(f"{source}: member {bad} fails its CRC check; delete the zip and download again.")
            with atomic_dir(out_dir) as tmp:
                for name in FILES:
                    z.extract(name, tmp)
                _check_non_empty(tmp, source)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{source}: not a valid zip file ({exc}); delete it and download it again.") from exc


def _check_non_empty(folder: Path, source: Path) -> None:
    empty = [name for name in FILES if (folder / name).stat().st_size == 0]
    if empty:
        raise DownloadError(f"{source}: {', '.join(empty)} is empty; download the competition files again.")


def _parent(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir.parent


def _remove_stale_temps(folder: Path) -> None:
    """Delete the temporary folders a killed earlier run of this stage left in `folder`."""
    for prefix in _TEMP_PREFIXES:
        for stale in folder.glob(f"{prefix}*"):
            shutil.rmtree(stale, ignore_errors=True)
