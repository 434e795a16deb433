"""The instance's SQLite storage, created by one process at a time.

See docs/troubleshooting.md, "Processes and the instance".

Why: Dagster's SQLite storages create their tables the first time a process opens a new
``DAGSTER_HOME``, with no lock between processes. Runs started at the same moment on a fresh
folder race there: some fail ("table runs already exists", "UNIQUE constraint failed:
alembic_version.version_num"), and one that finds the tables of another process but not yet
its schema version stamps an older version beside it, after which every process opening the
folder fails ("Version table 'alembic_version' has more than one head present").

The ``dagster`` CLI, the daemon and the UI open the instance before they load this project's
definitions, so a lock taken there would come too late. The instance settings name this
instance class instead (``.dagster_home/dagster.yaml``): its default storage is Dagster's own,
opened while holding an exclusive lock on a file in the instance folder, so every process finds
the tables either absent or complete. A class of instance rather than of storage, because only
the instance learns the folder it was loaded from (a storage's settings would have to name it,
and ``{env: DAGSTER_HOME}`` fails where that variable is unset).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.sqlite_storage import DagsterSqliteStorage, SqliteStorageConfig
from dagster._serdes import ConfigurableClassData

# Beside the storage's folders (history/, schedules/) in the instance folder.
LOCK_FILE_NAME = "storage.lock"


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing); waits for other holders.

    The kernel releases the lock when its holder exits, however it exits, so a process killed
    while it holds the lock never blocks the next one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


class LockedSqliteStorage(DagsterSqliteStorage):
    """Dagster's default SQLite storage (same files, same layout), opened under a lock.

    Opening an initialised storage only reads its schema version, so the lock is held for
    milliseconds once the folder exists; the storage's later reads and writes are not locked.
    """

    def __init__(self, base_dir: str, inst_data: ConfigurableClassData | None = None) -> None:
        with exclusive_lock(Path(base_dir) / LOCK_FILE_NAME):
            super().__init__(base_dir, inst_data)

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData, config_value: SqliteStorageConfig
    ) -> LockedSqliteStorage:
        # The parent's builds the parent class by name; this builds this one.
        return cls.from_local(inst_data=inst_data, **config_value)


class LockedStorageInstance(dg.DagsterInstance):
    """Dagster's instance, whose default storage is ``LockedSqliteStorage`` in its folder.

    Settings that name a storage (``storage: postgres:`` in deploy/dagster.yaml) still win.
    """

    @classmethod
    def config_schema(cls) -> Mapping[str, Any]:
        return {}

    @staticmethod
    def config_defaults(base_dir: str) -> Mapping[str, ConfigurableClassData | None]:
        return {
            **InstanceRef.config_defaults(base_dir),
            # JSON is YAML, which Dagster reads the settings as.
            "storage": ConfigurableClassData(
                __name__, LockedSqliteStorage.__name__, json.dumps({"base_dir": base_dir})
            ),
        }
