"""Get Kaggle's four competition files into one folder, from Kaggle, a local copy, or the embedded sample.

The folder's record (`pipeline.provenance`) holds the data settings and the size and digest of each file, and
nothing about the machine (no mtimes): the same competition files make the same bytes on every machine, so DVC's
run-cache shared between machines restores the stages after this one instead of re-running them. A rerun from
Kaggle or the sample finds the files intact and does nothing (no Kaggle call); a local source is always copied
again (seconds), so a replaced cifar-10.zip at the same path is never missed. The settings stage's download.json
holds the local files' size and mtime, so `dvc repro` runs this stage when they change.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path

from pipeline import kaggle_io, sample
from pipeline.atomic import atomic_dir
from pipeline.competition import FILES, ZIP_NAME
from pipeline.config import DataConfig, source_settings
from pipeline.errors import PipelineError
from pipeline.provenance import ProvenanceError, Record, file_digest, read_record, write_record

log = logging.getLogger(__name__)
STAGE = "download"
_TEMP_PREFIXES = (".download-", ".sample-")  # this stage's temporary folders beside its output


class DownloadError(PipelineError):
    """The competition files could not be fetched, or what was fetched is incomplete."""


def source_identity(data: DataConfig) -> dict:
    """The data settings that choose the files and, for data.source local, the size and mtime of each source file:
    what the download stage's output is made from (the `settings` stage writes it as download.json, a dependency
    of the download stage, so DVC re-runs download when it changes)."""
    return {"settings": source_settings(data), "source": _local_files(data)}


def _local_files(data: DataConfig) -> dict:
    if data.source != "local":
        return {}
    source = Path(data.path)
    files = [source / name for name in FILES] if source.is_dir() else [source]
    if not all(f.is_file() for f in files):
        missing = next(f for f in files if not f.is_file())
        raise DownloadError(f"{missing}: not found; set data.path to Kaggle's {ZIP_NAME} or a folder holding"
                            f" {', '.join(FILES)}.")  # fmt: skip
    return {str(f.resolve()): {"size": f.stat().st_size, "mtime_ns": f.stat().st_mtime_ns} for f in files}


def fetch_competition(data: DataConfig, out_dir: Path) -> None:
    """Put train.7z, test.7z, trainLabels.csv and sampleSubmission.csv in `out_dir`, all or nothing, with the
    folder's record. A rerun for the same source finds them intact and does nothing."""
    out_dir = Path(out_dir)
    settings = source_settings(data)
    if _already_fetched(out_dir, settings):
        log.info("%s already holds the competition files from this source; nothing to do", out_dir)
        return
    _remove_stale_temps(out_dir.parent)
    if data.source == "kaggle":
        api = kaggle_io.connect()  # fails before anything is written
        with tempfile.TemporaryDirectory(prefix=_TEMP_PREFIXES[0], dir=_parent(out_dir)) as tmp:
            unpack_competition(kaggle_io.download_competition(api, Path(tmp)), out_dir, settings)
    elif data.source == "local":
        unpack_competition(Path(data.path), out_dir, settings)
    else:
        with tempfile.TemporaryDirectory(prefix=_TEMP_PREFIXES[1], dir=_parent(out_dir)) as tmp:
            zip_path = Path(tmp) / ZIP_NAME
            log.info(
                "writing the embedded sample competition (%d train, %d test images)",
                data.sample.n_train,
                data.sample.n_test,
            )
            sample.write_sample_competition(zip_path, data.sample.n_train, data.sample.n_test, data.sample.seed)
            unpack_competition(zip_path, out_dir, settings)
    log.info("competition files in %s: %s", out_dir, ", ".join(FILES))


def _already_fetched(out_dir: Path, settings: dict) -> bool:
    if settings["data.source"] == "local":
        return False
    try:
        record = read_record(out_dir)
    except ProvenanceError:
        return False
    sizes = record.facts.get("files", {})
    return (
        record.stage == STAGE
        and record.settings == settings
        and all((out_dir / name).is_file() and (out_dir / name).stat().st_size == sizes.get(name, {}).get("size")
                for name in FILES)
    )  # fmt: skip


def unpack_competition(source: Path, out_dir: Path, settings: dict | None = None) -> None:
    """Copy Kaggle's four files from `source` (cifar-10.zip as Kaggle ships it, or a folder) into `out_dir`, with
    its record (`settings`: the data settings that chose `source`)."""
    if not source.exists():
        raise DownloadError(f"{source}: not found; set data.path to Kaggle's {ZIP_NAME} or a folder holding {FILES}.")
    settings = settings or {}
    if source.is_dir():
        missing = [name for name in FILES if not (source / name).is_file()]
        if missing:
            raise DownloadError(f"{source}: lacks {', '.join(missing)}; it must hold all of {', '.join(FILES)}.")
        with atomic_dir(out_dir) as tmp:
            for name in FILES:
                shutil.copyfile(source / name, tmp / name)
            _finish(tmp, source, settings)
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
                _finish(tmp, source, settings)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{source}: not a valid zip file ({exc}); delete it and download it again.") from exc
    except (zlib.error, EOFError) as exc:  # a damaged deflate stream inside a well-formed zip
        raise DownloadError(f"{source}: a member's compressed data is damaged ({type(exc).__name__}: {exc}); delete"
                            " the zip and download it again.") from exc  # fmt: skip
    except NotImplementedError as exc:  # e.g. Deflate64, which Python's zipfile cannot read
        raise DownloadError(
            f"{source}: uses a compression Python cannot read ({exc}); re-pack it as a plain zip (`zip -r`) or"
            " download Kaggle's own cifar-10.zip again."
        ) from exc


def _finish(folder: Path, source: Path, settings: dict) -> None:
    """Check the four files are not empty and write the folder's record (last: it means they are complete)."""
    empty = [name for name in FILES if (folder / name).stat().st_size == 0]
    if empty:
        raise DownloadError(f"{source}: {', '.join(empty)} is empty; download the competition files again.")
    files = {name: {"size": (folder / name).stat().st_size, "digest": file_digest(folder / name)} for name in FILES}
    write_record(folder, Record(stage=STAGE, settings=settings, facts={"files": files}))


def _parent(out_dir: Path) -> Path:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return out_dir.parent


def _remove_stale_temps(folder: Path) -> None:
    """Delete the temporary folders a killed earlier run of this stage left in `folder`."""
    for prefix in _TEMP_PREFIXES:
        for stale in folder.glob(f"{prefix}*"):
            shutil.rmtree(stale, ignore_errors=True)
