"""The summary and machine-readable report both import commands write.

Every item read ends in exactly one outcome (stored, updated, unchanged, deleted, skipped
with a reason, or an error with where it was), so ``read`` is always their sum and a
report can be checked by a scheduler without reading the text.
"""

import dataclasses
import datetime
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Errors kept in the report with their location; the count goes on beyond it, so a feed
# that is wrong on every line does not grow the report without bound.
MAX_ERRORS_LISTED = 1000

Progress = Callable[[int, int], None]  # (done, total): bytes read of all input files


@dataclasses.dataclass
class ImportError_:
    file: str
    line: int | None
    column: str
    message: str
    item: str = ""  # "Type/id", a claim number, ...

    def text(self) -> str:
        where = self.file + (f":{self.line}" if self.line is not None else "") + (f" [{self.column}]" if self.column else "")
        return f"{where}: {self.item + ': ' if self.item else ''}{self.message}"


@dataclasses.dataclass
class ImportReport:
    command: str
    started_at: str = dataclasses.field(default_factory=lambda: datetime.datetime.now(datetime.UTC).isoformat())
    finished_at: str = ""
    read: int = 0
    stored: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)
    error_count: int = 0
    errors: list[ImportError_] = dataclasses.field(default_factory=list)
    # Per file or per table counts, for the reader of the summary.
    by_kind: dict[str, Counter] = dataclasses.field(default_factory=dict)
    # What the import did beyond counting rows (claims changed, attribution refreshed, ...).
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def count(self, outcome: str, *, kind: str, n: int = 1) -> None:
        """Count ``n`` items of ``kind`` that ended in ``outcome`` (stored, updated, unchanged, deleted)."""
        setattr(self, outcome, getattr(self, outcome) + n)
        self.by_kind.setdefault(kind, Counter())[outcome] += n

    def skip(self, reason: str, *, kind: str) -> None:
        self.skipped[reason] += 1
        self.by_kind.setdefault(kind, Counter())["skipped"] += 1

    def error(self, *, file: str, line: int | None, message: str, column: str = "", item: str = "",
              kind: str = "") -> None:
        self.error_count += 1
        if kind:
            self.by_kind.setdefault(kind, Counter())["errors"] += 1
        if len(self.errors) < MAX_ERRORS_LISTED:
            self.errors.append(ImportError_(file=file, line=line, column=column, message=message, item=item))

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command, "started_at": self.started_at, "finished_at": self.finished_at,
            "read": self.read, "stored": self.stored, "updated": self.updated, "unchanged": self.unchanged,
            "deleted": self.deleted, "skipped": self.skipped_total, "skipped_by_reason": dict(self.skipped),
            "errors": self.error_count, "errors_listed": [dataclasses.asdict(e) for e in self.errors],
            "by_kind": {k: dict(v) for k, v in sorted(self.by_kind.items())}, **self.extra,
        }

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_dict(), indent=2) + "\n")

    def summary_lines(self) -> list[str]:
        lines = [
            f"read {self.read}, stored {self.stored}, updated {self.updated}, unchanged {self.unchanged}, "
            f"deleted {self.deleted}, skipped {self.skipped_total}, errors {self.error_count}",
        ]
        lines += [f"  skipped {n}: {reason}" for reason, n in self.skipped.most_common()]
        lines += [f"  error {e.text()}" for e in self.errors[:50]]
        if self.error_count > 50:
            lines.append(f"  ... {self.error_count - 50} more errors (see --report)")
        return lines

    def finish(self) -> "ImportReport":
        self.finished_at = datetime.datetime.now(datetime.UTC).isoformat()
        return self


class ProgressBar:
    """Draw ``[#####.....]  42%`` on a terminal stream, at most once per percent."""

    def __init__(self, stream: Any, *, label: str, enabled: bool = True) -> None:
        self.stream, self.label, self.enabled, self.last = stream, label, enabled, -1

    def __call__(self, done: int, total: int) -> None:
        percent = int(100 * done / total) if total else 100
        if not self.enabled or percent == self.last:
            return
        self.last = percent
        filled = percent // 5
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (20 - filled)}] {percent:3d}%")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.last >= 0:
            self.stream.write("\n")
