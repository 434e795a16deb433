"""The per-day CSV objects in a local folder: the embedded default's stand-in for a bucket."""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path

from pydantic import Field

from agent_metrics_pipeline.core.processes import owner_tag, sweep
from agent_metrics_pipeline.storage.io_manager import DailyCsvIOManager, ObjectStoreError

PUBLISHED_FILE_MODE = 0o666
# A file being written, named after its process: one a killed run left is swept by the next.
TEMPORARY_PREFIX = ".tmp-"


class LocalCsvIOManager(DailyCsvIOManager):
    """The same layout under a local folder, written atomically (temp file, then rename)."""

    base_dir: str = Field(description="Folder that plays the role of the bucket.")

    def _path(self, key: str) -> Path:
        base = Path(self.base_dir).resolve()
        path = (base / key).resolve()
        if not path.is_relative_to(base):
            raise ObjectStoreError(f"Key {key!r} points outside {base}; check S3_PREFIX.")
        return path

    def uri(self, key: str) -> str:
        return str(self._path(key))

    def _write(self, key: str, data: bytes, content_type: str | None = None) -> None:
        target = self._path(key)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            sweep(target.parent, TEMPORARY_PREFIX)
            temporary = target.parent / f"{TEMPORARY_PREFIX}{owner_tag()}{uuid.uuid4().hex}"
            # Created with the published files' mode, less the process's umask, as any file it
            # creates: days written at once from several threads never touch the umask.
            descriptor = os.open(
                temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PUBLISHED_FILE_MODE
            )
            try:
                with os.fdopen(descriptor, "wb") as tmp:
                    tmp.write(data)
                    tmp.flush()
                    os.fsync(tmp.fileno())
                os.replace(temporary, target)
            except BaseException:
                temporary.unlink(missing_ok=True)
                raise
        except OSError as error:
            raise ObjectStoreError(
                f"Cannot write {target}: {error.strerror}. Point AGENT_METRICS_HOME at a folder "
                "this process can write."
            ) from None

    def _read(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectStoreError(
                f"No file at {path}: materialize that partition before reading it."
            ) from None

    def _list(self, folder: str) -> list[str]:
        path = self._path(folder)
        if not path.is_dir():
            return []
        # Another writer's temporary files are not objects yet.
        return [
            f"{folder}/{entry.name}"
            for entry in path.iterdir()
            if entry.is_file() and not entry.name.startswith(TEMPORARY_PREFIX)
        ]

    def _delete(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self._path(key).unlink(missing_ok=True)
            except OSError as error:
                raise ObjectStoreError(
                    f"Cannot remove {self._path(key)}: {error.strerror}."
                ) from None
        # As in a bucket, a folder exists while it holds an object: one emptied goes too (a
        # day's partial/ folder once the day is published final).
        for folder in {self._path(key).parent for key in keys}:
            with contextlib.suppress(OSError):
                folder.rmdir()
