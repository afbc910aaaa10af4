"""The incremental Parquet export: the store's jobs, runs and resource samples as Parquet parts.

Each export writes, per table, one new part file holding only the rows new or changed since the
previous part: jobs by ``(updated_at, id)`` (the index ``ix_jobs_updated`` makes that a range
read, so an export's cost follows the news, not the history), the runs of those jobs, and
samples by id (they are only ever appended). A job's charge (GPU-hours, USD, SUs) is on its row,
so the jobs' parts are also the costs' snapshot.

The files are the only state. A part's name carries its sequence number and the watermark it
reaches (``jobs/part-000007-<updated_at µs>-<id>.parquet``, ``samples/part-000007-<last id>
.parquet``), so a restart resumes from the newest name, and a crash before the rename leaves no
part and no advanced watermark (the next export writes the same rows again). A job changed
since an earlier part appears in several parts; readers keep each id's newest row
(:mod:`.queries`). :meth:`ParquetExport.compact` folds a table's parts into one.

The rows travel from the store to DuckDB as CSV in a temporary file (DuckDB's own reader and
Parquet writer do the rest): the server process needs neither pyarrow nor numpy.

Watermarks assume one writer's commit order (the store's serialised write path): servers that
share a PostgreSQL database and commit a job change with an older ``updated_at`` after an export
has passed it would have that change picked up at the job's next change, not before.
"""

from __future__ import annotations

import asyncio
import csv
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cosmic_horizons_lab.server.store.database import Store
from cosmic_horizons_lab.server.store.orm import JobRecord, JobSample, Run

#: Rows read from the store per query; bounds the server's memory during a large first export.
CHUNK = 50_000
_NULL = "\\N"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Table:
    """One exported table: its columns (name, DuckDB type) as the Parquet files hold them."""

    name: str
    columns: tuple[tuple[str, str], ...]

    @property
    def names(self) -> list[str]:
        return [c for c, _ in self.columns]


JOBS = Table("jobs", (
    ("id", "VARCHAR"), ("user", "VARCHAR"), ("agent", "VARCHAR"), ("dataset_id", "VARCHAR"),
    ("status", "VARCHAR"), ("priority", "INTEGER"), ("gpu_count", "INTEGER"), ("backend", "VARCHAR"),
    ("server_id", "VARCHAR"), ("batch_id", "VARCHAR"), ("reason", "VARCHAR"), ("attempts", "INTEGER"),
    ("max_runtime_seconds", "BIGINT"), ("created_at", "TIMESTAMP"), ("updated_at", "TIMESTAMP"),
    ("started_at", "TIMESTAMP"), ("completed_at", "TIMESTAMP"), ("gpu_hours", "DOUBLE"),
    ("cost_usd", "DOUBLE"), ("su_charged", "DOUBLE"),
))
RUNS = Table("runs", (
    ("id", "BIGINT"), ("job_id", "VARCHAR"), ("attempt", "INTEGER"), ("backend", "VARCHAR"),
    ("status", "VARCHAR"), ("exit_code", "INTEGER"), ("reason", "VARCHAR"), ("submitted_at", "TIMESTAMP"),
    ("started_at", "TIMESTAMP"), ("ended_at", "TIMESTAMP"),
))
SAMPLES = Table("samples", (
    ("id", "BIGINT"), ("job_id", "VARCHAR"), ("user", "VARCHAR"), ("host", "VARCHAR"), ("ts", "TIMESTAMP"),
    ("kind", "VARCHAR"), ("gpu_uuid", "VARCHAR"), ("gpu_index", "INTEGER"), ("utilization", "DOUBLE"),
    ("memory_bytes", "BIGINT"), ("memory_total_bytes", "BIGINT"), ("power_watts", "DOUBLE"),
    ("temperature_c", "DOUBLE"),
))
TABLES = (JOBS, RUNS, SAMPLES)

_JOB_PART = re.compile(r"^part-(\d{6})-(\d+)-(.+)\.parquet$")
_SAMPLE_PART = re.compile(r"^part-(\d{6})-(\d+)\.parquet$")
_RUN_PART = re.compile(r"^part-(\d{6})\.parquet$")


def _micros(when: datetime | None) -> int | None:
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = when - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


class ParquetExport:
    """Writes the parts under ``directory`` (``jobs/``, ``runs/``, ``samples/``) and knows them."""

    def __init__(self, store: Store, directory: Path) -> None:
        self.store = store
        self.directory = Path(directory)
        self._lock = asyncio.Lock()
        self._compacting = asyncio.Lock()

    # -- what is there ---------------------------------------------------------------------
    def parts(self, table: Table | str) -> list[Path]:
        """The table's part files, oldest first (a name sorts by its sequence number)."""
        name = table if isinstance(table, str) else table.name
        folder = self.directory / name
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if p.name.startswith("part-") and p.suffix == ".parquet")

    def _sequence(self) -> int:
        seqs = [int(p.name[5:11]) for t in TABLES for p in self.parts(t)]
        return max(seqs, default=0)

    def watermarks(self) -> tuple[tuple[int, str] | None, int]:
        """((updated_at µs, id) of the newest exported job change, or None; the last exported sample id)."""
        job_mark = None
        for p in self.parts(JOBS):
            m = _JOB_PART.match(p.name)
            if m:
                job_mark = max(job_mark or (0, ""), (int(m.group(2)), m.group(3)))
        sample_mark = 0
        for p in self.parts(SAMPLES):
            m = _SAMPLE_PART.match(p.name)
            if m:
                sample_mark = max(sample_mark, int(m.group(2)))
        return job_mark, sample_mark

    # -- one export ---------------------------------------------------------------------------
    async def export(self) -> dict[str, Any]:
        """Write what changed since the last part; returns rows per table and the seconds it took."""
        async with self._lock:
            started = time.perf_counter()
            for t in TABLES:
                (self.directory / t.name).mkdir(parents=True, exist_ok=True)
            seq = self._sequence() + 1
            job_mark, sample_mark = self.watermarks()
            jobs, new_job_mark = await self._export_jobs(seq, job_mark)
            runs = await self._export_runs(seq, job_mark, new_job_mark)
            if jobs:
                # the jobs' part, whose name advances the watermark, goes last: a crash before it
                # leaves the same jobs (and their runs) to the next export
                assert new_job_mark is not None
                await asyncio.to_thread(self._publish, JOBS, seq,
                                        f"part-{seq:06d}-{new_job_mark[0]}-{new_job_mark[1]}.parquet")
            samples = await self._export_samples(seq, sample_mark)
            return {"jobs": jobs, "runs": runs, "samples": samples,
                    "seconds": round(time.perf_counter() - started, 6), "sequence": seq}

    async def _export_jobs(self, seq: int, mark: tuple[int, str] | None) -> tuple[int, tuple[int, str] | None]:
        """Stage the jobs changed since ``mark``; (their count, the new watermark). Published by export()."""
        query = sa.select(*self._text_columns(JobRecord, JOBS)).order_by(JobRecord.updated_at, JobRecord.id)
        if mark is not None:
            query = query.where(self._after(mark))
        count, last = await self._stream(query, JOBS, seq)
        if not count:
            return 0, mark
        names = JOBS.names
        new_mark = (_micros(_parse(last[names.index("updated_at")])) or 0, last[names.index("id")])
        return count, new_mark

    async def _export_runs(self, seq: int, mark: tuple[int, str] | None, new_mark: tuple[int, str] | None) -> int:
        """The runs of the jobs this export took (by the same watermark range, not a list of ids)."""
        if new_mark is None or new_mark == mark:
            return 0
        query = (sa.select(*self._text_columns(Run, RUNS)).join(JobRecord, JobRecord.id == Run.job_id)
                 .where(sa.not_(self._after(new_mark))))
        if mark is not None:
            query = query.where(self._after(mark))
        count, _ = await self._stream(query, RUNS, seq)
        if count:
            await asyncio.to_thread(self._publish, RUNS, seq, f"part-{seq:06d}.parquet")
        return count

    async def _export_samples(self, seq: int, after: int) -> int:
        query = sa.select(*self._text_columns(JobSample, SAMPLES)).where(JobSample.id > after).order_by(JobSample.id)
        count, last = await self._stream(query, SAMPLES, seq)
        if count:
            await asyncio.to_thread(self._publish, SAMPLES, seq, f"part-{seq:06d}-{last[0]}.parquet")
        return count

    def _text_columns(self, model: Any, table: Table) -> list[Any]:
        """Each column as text, NULL as ``\\N``, times as UTC ``YYYY-MM-DD HH:MM:SS.ffffff``: rows go to
        the CSV as the database hands them, with no per-value work in Python."""
        postgres = self.store.engine.dialect.name == "postgresql"
        out = []
        for name, kind in table.columns:
            col = getattr(model, name)
            if kind == "TIMESTAMP" and postgres:
                text = sa.func.to_char(sa.func.timezone("UTC", col), "YYYY-MM-DD HH24:MI:SS.US")
            elif postgres:
                text = sa.cast(col, sa.Text)
            else:  # SQLite's values keep their own type through coalesce; the csv writer prints them
                text = sa.type_coerce(col, sa.Text)
            out.append(sa.func.coalesce(text, _NULL).label(name))
        return out

    def _after(self, mark: tuple[int, str]) -> Any:
        """Jobs past the watermark ``(updated_at µs, id)`` in the export's order. On SQLite the bound is
        the text the column holds (SQLAlchemy's format), so the statement can be rendered literally."""
        when: Any = _from_micros(mark[0])
        if self.store.is_sqlite:
            when = sa.literal(when.strftime("%Y-%m-%d %H:%M:%S.%f"), sa.String)
        return sa.or_(JobRecord.updated_at > when, sa.and_(JobRecord.updated_at == when, JobRecord.id > mark[1]))

    async def _stream(self, query: Any, table: Table, seq: int) -> tuple[int, Any]:
        """Stream the query's rows into the table's staging CSV; (rows written, the last row)."""
        staging = self._staging(table, seq)
        if self.store.is_sqlite:
            # the sqlite3 module and the csv writer, both C, in a worker thread: no row passes
            # through Python code (aiosqlite and Row objects cost ~10x more per row)
            sql = str(query.compile(dialect=self.store.engine.dialect, compile_kwargs={"literal_binds": True}))
            return await asyncio.to_thread(_sqlite_to_csv, self.store.engine.url.database, sql, staging)
        count, last = 0, None
        with staging.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            async with self.store.engine.connect() as conn:
                result = await conn.stream(query)
                async for rows in result.partitions(CHUNK):
                    writer.writerows(rows)
                    count += len(rows)
                    last = rows[-1]
        if not count:
            staging.unlink(missing_ok=True)
        return count, last

    def _staging(self, table: Table, seq: int) -> Path:
        return self.directory / table.name / f".part-{seq:06d}.csv"

    def _publish(self, table: Table, seq: int, name: str) -> None:
        """The staged CSV → DuckDB's Parquet writer → the part's final name (atomic rename)."""
        import duckdb

        folder = self.directory / table.name
        staging = self._staging(table, seq)
        partial = folder / f".{name}.tmp"
        try:
            con = duckdb.connect()
            try:
                con.execute(f"COPY ({_read_csv(table, staging, seq)}) TO '{_quote(partial)}' "
                            "(FORMAT parquet, COMPRESSION zstd)")
            finally:
                con.close()
            os.replace(partial, folder / name)
        finally:
            staging.unlink(missing_ok=True)
            partial.unlink(missing_ok=True)

    # -- compaction ---------------------------------------------------------------------------
    async def compact(self, table: Table, whole: bool | None = None) -> int:
        """Fold the table's parts (each id's newest row for jobs and runs); returns the rows written.

        Tiered, so that its cost follows the news too: the parts after the first (the base) are
        folded into one, and the base joins them (``whole``) only when they have grown to a
        quarter of its size, or when asked. The folded part keeps the newest part's name (so its
        watermark), and the parts it replaces are removed only after it is in place; a reader
        that lists the folder in between sees rows twice, which the readers' newest-row rule
        absorbs (and a reader that finds a part gone asks again: ``queries.py``). Exports go on
        meanwhile: they only add parts with greater numbers.
        """
        async with self._compacting:
            parts = self.parts(table)
            if whole is None:
                whole = len(parts) > 1 and sum(p.stat().st_size for p in parts[1:]) > parts[0].stat().st_size / 4
            fold = parts if whole else parts[1:]
            if len(fold) < 2:
                return 0
            return await asyncio.to_thread(self._compact, table, fold)

    def _compact(self, table: Table, parts: list[Path]) -> int:
        import duckdb

        newest = parts[-1]
        partial = newest.with_name(f".{newest.name}.tmp")
        files = ", ".join(f"'{_quote(p)}'" for p in parts)
        source = f"read_parquet([{files}])"
        if table is not SAMPLES:
            source = (f"(SELECT * FROM {source} QUALIFY row_number() OVER "
                      f"(PARTITION BY id ORDER BY _seq DESC) = 1)")
        con = duckdb.connect()
        try:
            con.execute(f"COPY (SELECT * FROM {source} ORDER BY id) TO '{_quote(partial)}' "
                        "(FORMAT parquet, COMPRESSION zstd)")
            count = con.execute(f"SELECT count(*) FROM read_parquet('{_quote(partial)}')").fetchone()[0]
        finally:
            con.close()
        os.replace(partial, newest)
        for p in parts[:-1]:
            p.unlink(missing_ok=True)
        return int(count)


def _sqlite_to_csv(database: str, sql: str, staging: Path) -> tuple[int, Any]:
    count, last = 0, None
    con = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        cur = con.execute(sql)
        with staging.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            while rows := cur.fetchmany(CHUNK):
                writer.writerows(rows)
                count += len(rows)
                last = rows[-1]
    finally:
        con.close()
    if not count:
        staging.unlink(missing_ok=True)
    return count, last


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def _read_csv(table: Table, path: Path, seq: int) -> str:
    """A SELECT over the staged CSV with the table's types, and the part's sequence number."""
    columns = ", ".join(f"'{c}': '{t}'" for c, t in table.columns)
    return (f"SELECT *, {seq}::INTEGER AS _seq FROM read_csv('{_quote(path)}', header=false, auto_detect=false, "
            f"delim=',', quote='\"', escape='\"', nullstr='{_NULL}', timestampformat='%Y-%m-%d %H:%M:%S.%f', "
            f"columns={{{columns}}})")


def _quote(path: Path) -> str:
    return str(path).replace("'", "''")
