"""Publishes a daily-partitioned Polars frame as one CSV object per day, and reads it back.

Key layout, identical in S3 and in a local folder::

    PREFIX/YYYY-MM-DD/ASSET_YYYY-MM-DD.csv[.gz]

A day read before it ended (today, when it is a partition) is partial: it is published under
``PREFIX/YYYY-MM-DD/partial/`` instead, with ``as_of.json`` saying when it was computed, so the
day's own key only ever holds the final file; the final publication removes the partial one.

A run over a range of days hands over its days staged one file each (or one frame, split by
its ``date`` column), so every day gets the same object a single-day run would write (a day
without rows gets a header-only file). Dagster's built-in object-store IO managers refuse
multi-partition outputs.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import math
import re
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor, as_completed
from hashlib import sha256

import dagster as dg
from pydantic import Field

from agent_metrics_pipeline.core.deferred import polars as pl
from agent_metrics_pipeline.core.errors import (
    PermanentError,
    TransientError,
    no_retry_for_permanent_errors,
)
from agent_metrics_pipeline.core.names import DEFAULT_S3_PREFIX
from agent_metrics_pipeline.core.partitions import days_of
from agent_metrics_pipeline.storage.handover import (
    StagedRows,
    csv_by_day,
    partly_published,
    running_days_of,
)
from agent_metrics_pipeline.storage.published_format import from_csv_bytes, to_csv_bytes

MANIFEST_NAME = "manifest.json"
PARTIAL_FOLDER = "partial"
PARTIAL_MARKER_NAME = "as_of.json"
# Days written at once by a run of several.
PUBLISHING_THREADS = 4
PART_DIGEST_CHARS = 16
PART_NAME = re.compile(rf"part-\d{{5}}-[0-9a-f]{{{PART_DIGEST_CHARS}}}\.csv(\.gz)?")


class ObjectStoreUnavailableError(TransientError):
    """The object store could not be reached or timed out."""


class ObjectStoreError(PermanentError):
    """The object store refused the request: missing bucket, bad credentials, no such object."""


class DailyCsvIOManager(dg.ConfigurableIOManager):
    """Moves bytes between a partitioned frame and per-day CSV objects; storage is a subclass."""

    prefix: str = Field(default=DEFAULT_S3_PREFIX, description="Key prefix before the day folder.")
    gzip: bool = Field(default=False, description="Write .csv.gz instead of .csv.")
    rows_per_file: int | None = Field(
        default=None,
        description=(
            "Unset: one file per day. N: each day as parts of at most N rows "
            "(part-00000-<checksum>.csv, ...) and a manifest.json written last."
        ),
    )
    partial_days: bool = Field(
        default=False,
        description=(
            "Today is published as partial under the day's partial/ folder: a day's final "
            "publication then removes its partial one."
        ),
    )

    @abstractmethod
    def _write(self, key: str, data: bytes, content_type: str | None = None) -> None: ...

    @abstractmethod
    def _read(self, key: str) -> bytes: ...

    @abstractmethod
    def _list(self, folder: str) -> list[str]:
        """The keys of the objects under ``folder`` (a key prefix without its final slash)."""

    @abstractmethod
    def _delete(self, keys: list[str]) -> None: ...

    @abstractmethod
    def uri(self, key: str) -> str: ...

    @property
    def _suffix(self) -> str:
        return ".csv.gz" if self.gzip else ".csv"

    def day_folder(self, partition_key: str, partial: bool = False) -> str:
        folder = f"{self.prefix}/{partition_key}"
        return f"{folder}/{PARTIAL_FOLDER}" if partial else folder

    def object_key(self, asset_name: str, partition_key: str, partial: bool = False) -> str:
        name = f"{asset_name}_{partition_key}{self._suffix}"
        return f"{self.day_folder(partition_key, partial)}/{name}"

    def part_key(self, partition_key: str, index: int, checksum: str, partial: bool = False) -> str:
        """Named by position and content (``checksum``, the part's SHA-256): a republication
        that changes a part writes a new object, so the parts an earlier manifest lists stay
        intact until it is replaced."""
        name = f"part-{index:05d}-{checksum[:PART_DIGEST_CHARS]}{self._suffix}"
        return f"{self.day_folder(partition_key, partial)}/{name}"

    def manifest_key(self, partition_key: str, partial: bool = False) -> str:
        return f"{self.day_folder(partition_key, partial)}/{MANIFEST_NAME}"

    def partial_marker_key(self, partition_key: str) -> str:
        return f"{self.day_folder(partition_key, partial=True)}/{PARTIAL_MARKER_NAME}"

    def _publish_partial_day(
        self, asset_name: str, partition_key: str, csv: bytes, computed_at: dt.datetime
    ) -> str:
        """Writes a day that has not ended under its partial folder, then the marker saying
        when it was computed; returns the key that stands for it."""
        stands_for = self._publish_day(asset_name, partition_key, csv, partial=True)
        marker = {
            "date": partition_key,
            "partial": True,
            "computed_at": computed_at.astimezone(dt.UTC).isoformat(),
            "key": stands_for,
        }
        self._write(
            self.partial_marker_key(partition_key),
            json.dumps(marker, indent=2).encode("utf-8"),
            content_type="application/json",
        )
        return stands_for

    def _remove_partial_day(self, asset_name: str, partition_key: str) -> None:
        """Once a day's final file is written: its partial publication, this IO manager's
        objects only. A day in one file has known names, removed without listing the folder
        (whether gzipped or not, should the setting have changed in between)."""
        folder = self.day_folder(partition_key, partial=True)
        one_file = f"{folder}/{asset_name}_{partition_key}"
        # The marker and the manifest first, the data last: stopped part-way, what is left
        # never points at a removed file.
        ours = [self.partial_marker_key(partition_key)]
        if self.rows_per_file is not None:
            manifest = self.manifest_key(partition_key, partial=True)
            listed = self._list(folder)
            ours += [manifest] if manifest in listed else []
            ours += [key for key in listed if PART_NAME.fullmatch(key.removeprefix(f"{folder}/"))]
        self._delete([*ours, f"{one_file}.csv", f"{one_file}.csv.gz"])

    def _publish_day(
        self, asset_name: str, partition_key: str, csv: bytes, partial: bool = False
    ) -> str:
        """Writes one day, given as its CSV bytes (:func:`to_csv_bytes`); returns the key that
        stands for it (its file, or its manifest)."""
        if self.rows_per_file is None:
            object_key = self.object_key(asset_name, partition_key, partial)
            self._write(object_key, self._compressed(csv))
            return object_key
        rows = from_csv_bytes(csv)
        parts = []
        for index in range(max(1, math.ceil(rows.height / self.rows_per_file))):
            part = rows.slice(index * self.rows_per_file, self.rows_per_file)
            data = self._compressed(to_csv_bytes(part))
            checksum = sha256(data).hexdigest()
            key = self.part_key(partition_key, index, checksum, partial)
            self._write(key, data)
            parts.append({"key": key, "rows": part.height, "sha256": checksum})
        manifest_key = self.manifest_key(partition_key, partial)
        manifest = {
            "date": partition_key,
            "rows": rows.height,
            "part_count": len(parts),
            "parts": parts,
        }
        # Written last: a reader that starts from the manifest never sees a half-written day.
        self._write(
            manifest_key,
            json.dumps(manifest, indent=2).encode("utf-8"),
            content_type="application/json",
        )
        # Only parts and the one-file layout's file are removed: anything else under the day's
        # folder is not this IO manager's.
        published = {manifest_key, *(part["key"] for part in parts)}
        day_folder = self.day_folder(partition_key, partial)
        one_file = self.object_key(asset_name, partition_key, partial)
        stale = [
            key
            for key in self._list(day_folder)
            if key not in published
            and (key == one_file or PART_NAME.fullmatch(key.removeprefix(f"{day_folder}/")))
        ]
        self._delete(stale)
        return manifest_key

    def _load_parts(self, partition_key: str, partial: bool = False) -> pl.DataFrame:
        manifest_key = self.manifest_key(partition_key, partial)
        manifest = json.loads(self._read(manifest_key))
        frames = []
        for part in manifest["parts"]:
            data = self._read(part["key"])
            if sha256(data).hexdigest() != part["sha256"]:
                raise ObjectStoreError(
                    f"{self.uri(part['key'])} does not match the checksum in "
                    f"{self.uri(manifest_key)}: the part was changed after it was published. "
                    "Materialize the day again."
                )
            frames.append(self._decode(data))
        return pl.concat(frames)

    def _compressed(self, csv: bytes) -> bytes:
        # mtime=0 keeps re-runs byte-identical.
        return gzip.compress(csv, mtime=0) if self.gzip else csv

    def _decode(self, data: bytes) -> pl.DataFrame:
        return from_csv_bytes(gzip.decompress(data) if self.gzip else data)

    def handle_output(self, context: dg.OutputContext, obj: pl.DataFrame | StagedRows) -> None:
        if not context.has_asset_partitions:
            raise dg.DagsterInvariantViolationError(
                f"{type(self).__name__} stores daily-partitioned assets only; "
                f"{context.asset_key.to_user_string()} has no partitions."
            )
        partition_keys = list(context.asset_partition_keys)
        days = days_of(partition_keys)
        csv_of_day = csv_by_day(obj, days)
        running = running_days_of(context, obj, days)
        asset_name = context.asset_key.path[-1]

        def publish(key: str, day: dt.date) -> tuple[str, Exception | None]:
            """The day's key; and the error of removing its partial folder, once it is final."""
            if day in running:
                return self._publish_partial_day(
                    asset_name, key, csv_of_day(day), running[day]
                ), None
            object_key = self._publish_day(asset_name, key, csv_of_day(day))
            try:
                if self.partial_days:
                    self._remove_partial_day(asset_name, key)
            except (ObjectStoreError, ObjectStoreUnavailableError) as error:
                return object_key, error
            return object_key, None

        uris: dict[str, str] = {}
        failure: Exception | None = None
        # A few days at once: each waits on the store more than it computes. On a fault, days
        # not started yet are left alone (cancelled, they are still handed out and skipped).
        pool = ThreadPoolExecutor(PUBLISHING_THREADS, thread_name_prefix="publish")
        futures = {
            pool.submit(publish, key, day): key
            for key, day in zip(partition_keys, days, strict=True)
        }
        try:
            for future in as_completed(futures):
                if future.cancelled():
                    continue
                try:
                    object_key, cleanup_error = future.result()
                except (ObjectStoreError, ObjectStoreUnavailableError) as error:
                    failure = failure or error
                    for other in futures:
                        other.cancel()
                    continue
                uris[futures[future]] = self.uri(object_key)
                failure = failure or cleanup_error
        except BaseException:
            # Any other fault, or the run being stopped: no further day is started.
            for other in futures:
                other.cancel()
            raise
        finally:
            pool.shutdown(wait=True)
        for key in partition_keys:
            if key in uris:
                # Each day's materialization links its own file, in ranges too.
                context.step_context.add_asset_metadata(
                    {"dagster/uri": dg.MetadataValue.path(uris[key])},
                    asset_key=context.asset_key,
                    partition_key=key,
                )
        if failure is not None:
            # Transient faults were retried at the write already: a step retry would only run
            # the query again.
            raise dg.Failure(
                description=partly_published(failure, partition_keys, set(uris)),
                allow_retries=False,
            )
        first = uris[partition_keys[0]]
        context.log.info(f"Wrote {len(uris)} file(s): {first}" + (" ..." if len(uris) > 1 else ""))

    def load_day(self, asset_name: str, partition_key: str, partial: bool = False) -> pl.DataFrame:
        """One published day, read back with the published column types (its parts in order,
        when days are written in parts); with ``partial``, the running figures of a day that
        had not ended."""
        if self.rows_per_file is not None:
            return self._load_parts(partition_key, partial)
        return self._decode(self._read(self.object_key(asset_name, partition_key, partial)))

    def partial_marker(self, partition_key: str) -> dict[str, object]:
        """What ``as_of.json`` says of a day's partial publication."""
        return json.loads(self._read(self.partial_marker_key(partition_key)))

    def load_input(self, context: dg.InputContext) -> pl.DataFrame | dict[str, pl.DataFrame]:
        asset_name = context.asset_key.path[-1]
        with no_retry_for_permanent_errors():
            frames = {key: self.load_day(asset_name, key) for key in context.asset_partition_keys}
        if len(frames) == 1:
            return next(iter(frames.values()))
        return frames
