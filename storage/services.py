"""The output file server's storage: gzip NDJSON parts written and read back.

Files live in ``STORAGES["exports"]`` (local disk by default, S3 through django-storages)
always gzip-compressed at level 1: compression costs less CPU than it saves in disk and
network, and a client that sends ``Accept-Encoding: gzip`` gets the stored bytes as they
are. Names are deterministic, so a work unit that runs twice overwrites its own parts.
"""

import dataclasses
import gzip
import os
import re
import tempfile
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

from django.core.files import File
from django.core.files.storage import FileSystemStorage, Storage, storages

from storage.models import ExportFile

GZIP_LEVEL = 1
CHUNK = 256 * 1024


def export_storage() -> Storage:
    """Return the storage that holds export files."""
    return storages["exports"]


@dataclasses.dataclass
class WrittenPart:
    name: str
    count: int
    size: int
    stored_size: int


class _PartSink:
    """One gzip part being written: straight into place on local disk, else to a temp file."""

    def __init__(self, storage: Storage, name: str) -> None:
        self.storage = storage
        self.name = name
        self.local = isinstance(storage, FileSystemStorage)
        if self.local:
            self.final_path = storage.path(name)
            os.makedirs(os.path.dirname(self.final_path), exist_ok=True)
            self.temp_path = f"{self.final_path}.{uuid.uuid4().hex}.tmp"
            self.raw: IO[bytes] = open(self.temp_path, "wb")
        else:
            self.raw = tempfile.TemporaryFile()
        self.gzip = gzip.GzipFile(filename="", mode="wb", fileobj=self.raw, compresslevel=GZIP_LEVEL, mtime=0)

    def write(self, data: bytes) -> None:
        self.gzip.write(data)

    def commit(self) -> int:
        """Finish the part, put it in place (overwriting a previous run's) and return its stored size."""
        self.gzip.close()
        stored_size = self.raw.tell()
        if self.local:
            self.raw.close()
            os.chmod(self.temp_path, 0o600)
            os.replace(self.temp_path, self.final_path)  # atomic overwrite
            return stored_size
        self.raw.seek(0)
        if self.storage.exists(self.name):
            self.storage.delete(self.name)
        saved = self.storage.save(self.name, File(self.raw, name=self.name))
        self.raw.close()
        if saved != self.name:  # Another run saved the same part meanwhile: keep one copy.
            self.storage.delete(saved)
        return stored_size

    def abort(self) -> None:
        try:
            self.gzip.close()
        finally:
            self.raw.close()
            if self.local and os.path.exists(self.temp_path):
                os.remove(self.temp_path)


class NDJSONPartWriter:
    """Write NDJSON lines into gzip parts of at most ``max_bytes`` (uncompressed) each.

    ``name_for(part_number)`` gives each part's deterministic storage name. Lines are
    buffered and handed to gzip in large blocks; a part holds at least one line.
    """

    def __init__(self, *, name_for: Callable[[int], str], max_bytes: int, storage: Storage | None = None) -> None:
        self.name_for = name_for
        self.max_bytes = max_bytes
        self.storage = storage or export_storage()
        self.parts: list[WrittenPart] = []
        self._sink: _PartSink | None = None
        self._size = 0
        self._count = 0
        self._buffer: list[bytes] = []
        self._buffer_size = 0

    def write_lines(self, lines: Iterable[bytes]) -> None:
        """Write lines, each ending in a newline."""
        for line in lines:
            length = len(line)
            if self._count and self._size + length > self.max_bytes:
                self._close_part()
            self._buffer.append(line)
            self._buffer_size += length
            self._size += length
            self._count += 1
            if self._buffer_size >= CHUNK:
                self._flush()

    def write_blocks(self, blocks: Iterable[bytes]) -> None:
        """Write blocks of whole lines (each block ends in a newline), counting lines by
        newlines and splitting parts only at line boundaries. Blocks skip the per-line
        work of ``write_lines``: a COPY stream is written as it arrives."""
        for block in blocks:
            while block:
                room = self.max_bytes - self._size
                if len(block) <= room:
                    take = len(block)
                else:
                    cut = block.rfind(b"\n", 0, room) if room > 0 else -1
                    if cut < 0 and self._count:
                        self._close_part()
                        continue
                    # A part holds at least one line, even one longer than max_bytes.
                    take = (cut if cut >= 0 else block.index(b"\n")) + 1
                chunk = block[:take] if take < len(block) else block
                self._buffer.append(chunk)
                self._buffer_size += take
                self._size += take
                self._count += chunk.count(b"\n")
                if take < len(block):
                    self._close_part()
                    block = block[take:]
                else:
                    block = b""
                if self._buffer_size >= CHUNK:
                    self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        if self._sink is None:
            self._sink = _PartSink(self.storage, self.name_for(len(self.parts)))
        self._sink.write(b"".join(self._buffer))
        self._buffer.clear()
        self._buffer_size = 0

    def _close_part(self) -> None:
        self._flush()
        if self._sink is None:
            return
        stored_size = self._sink.commit()
        self.parts.append(WrittenPart(self._sink.name, self._count, self._size, stored_size))
        self._sink, self._size, self._count = None, 0, 0

    def close(self) -> list[WrittenPart]:
        """Finish the last part and return every part written."""
        self._close_part()
        return self.parts

    def abort(self) -> None:
        if self._sink is not None:
            self._sink.abort()
            self._sink = None


def export_names_delete(*, names: Iterable[str]) -> None:
    """Delete stored files by name; missing ones are fine."""
    storage = export_storage()
    for name in names:
        storage.delete(name)


def export_parts_prune(*, name_for: Callable[[int], str], first: int) -> None:
    """Delete parts numbered ``first`` and up that a previous, longer run left behind."""
    storage = export_storage()
    number = first
    while storage.exists(name_for(number)):
        storage.delete(name_for(number))
        number += 1


def export_file_open(*, export_file: ExportFile) -> IO[bytes]:
    """Open the stored (gzip) bytes of a file."""
    return export_storage().open(export_file.name, "rb")


# --- Serving: gzip passthrough or decompression, and byte ranges (RFC 9110 section 14) ---

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeNotSatisfiable(Exception):
    pass


def byte_range_parse(*, header: str, length: int) -> tuple[int, int] | None:
    """Return the inclusive (start, end) a ``Range`` header asks for, or None to send it all.

    Only single ranges are honoured; a multi-range or malformed header is ignored
    (RFC 9110 14.2 lets a server ignore Range). Raise ``RangeNotSatisfiable`` for 416.
    """
    match = _RANGE.match(header.strip().replace(" ", ""))
    if not match or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.groups()
    if first:
        start = int(first)
        end = min(int(last), length - 1) if last else length - 1
        if last and int(last) < start:
            return None
        if start >= length:
            raise RangeNotSatisfiable
        return start, end
    suffix = int(last)
    if suffix == 0 or length == 0:
        raise RangeNotSatisfiable
    return max(0, length - suffix), length - 1


def accepts_gzip(*, header: str) -> bool:
    """Return True when ``Accept-Encoding`` accepts gzip (and not with q=0)."""
    for item in header.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() in {"gzip", "x-gzip", "*"}:
            q = params.strip().removeprefix("q=") if params.strip().startswith("q=") else "1"
            try:
                return float(q) > 0
            except ValueError:
                return True
    return False


def stored_bytes_iter(*, handle: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    """Yield stored bytes [start, end] and close the handle."""
    try:
        handle.seek(start)
        remaining = end - start + 1
        while remaining > 0:
            block = handle.read(min(CHUNK, remaining))
            if not block:
                break
            remaining -= len(block)
            yield block
    finally:
        handle.close()


def decompressed_bytes_iter(*, handle: IO[bytes], start: int, end: int) -> Iterator[bytes]:
    """Yield decompressed bytes [start, end] of a gzip file, decompressing on the fly."""
    decompressor = zlib.decompressobj(wbits=31)
    position = 0
    try:
        while position <= end:
            block = handle.read(CHUNK)
            data = decompressor.decompress(block) if block else decompressor.flush()
            if data:
                lo, hi = max(start - position, 0), min(end - position + 1, len(data))
                if lo < hi:
                    yield data[lo:hi]
                position += len(data)
            if not block:
                break
    finally:
        handle.close()


def lines_iter(*, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield the newline-terminated lines of a byte stream (a last unterminated line too)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line:
                yield line + b"\n"
    if pending:
        yield pending


def gzip_iter(*, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Yield ``chunks`` gzip-compressed on the fly, at the level stored files use."""
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)
    for chunk in chunks:
        if data := compressor.compress(chunk):
            yield data
    yield compressor.flush()


def file_row_fields(part: WrittenPart) -> dict[str, Any]:
    return {"name": part.name, "count": part.count, "size": part.size, "stored_size": part.stored_size}
