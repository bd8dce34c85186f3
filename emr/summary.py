"""The summary a physician reads first after a fetch: active problems, active medications,
allergies, immunizations, the latest labs and vitals with a small trend, the last
encounters and open or recent prior authorizations. Built from ``emr.history``'s items, so
each entry keeps its source and date."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field

from django.utils import timezone

from emr.history import History, Item

# Tests whose trend a summary draws when repeated (the A1c, eGFR, blood pressure,
# weight), first in this order; any other repeated numeric result gets one too.
TREND_FIRST = ["4548-4", "33914-3", "85354-9", "29463-7", "2160-0", "13457-7", "39156-5", "8867-4"]
SYSTOLIC, DIASTOLIC = "8480-6", "8462-4"
RECENT_DAYS = 365
TREND_POINTS = 12
# Pharmacy claims this recent show as fills even without a prescription in the data.
RECENT_FILL_DAYS = 180


@dataclass
class Trend:
    """A sparkline: one polyline per value series (two for blood pressure), in a small viewBox."""

    width: int
    height: int
    lines: list[str]
    dots: list[tuple[float, float]]
    label: str


@dataclass
class Series:
    """One test's results over time, newest first, with the latest one's words."""

    code: str
    name: str
    vital: bool
    items: list[Item] = field(default_factory=list)
    trend: Trend | None = None

    @property
    def latest(self) -> Item:
        return self.items[0]


@dataclass
class MedicationLine:
    """An active medication and its latest fill on a pharmacy claim (same RxNorm code), if any."""

    item: Item
    last_fill: Item | None = None


@dataclass
class FillLine:
    """A drug filled recently (pharmacy claims) with no active prescription in the history."""

    latest: Item
    name: str
    fills: int


@dataclass
class VaccineLine:
    latest: Item
    doses: int


@dataclass
class Summary:
    problems: list[Item]
    medications: list[MedicationLine]
    recent_fills: list[FillLine]
    allergies: list[Item]
    immunizations: list[VaccineLine]
    vitals: list[Series]
    labs: list[Series]
    encounters: list[Item]
    prior_auths: list[Item]

    @property
    def empty(self) -> bool:
        return not any((self.problems, self.medications, self.recent_fills, self.allergies, self.immunizations, self.vitals,
                        self.labs, self.encounters, self.prior_auths))


def _values(item: Item) -> tuple[float, ...] | None:
    """Return the numbers a trend plots for one result (systolic and diastolic for blood pressure)."""
    if item.fields["number"] is not None:
        return (item.fields["number"],)
    components = item.fields["components"]
    pair = (components.get(SYSTOLIC), components.get(DIASTOLIC))
    if all(isinstance(v, int | float) for v in pair):
        return tuple(float(v) for v in pair)
    return None


def trend_build(*, series: Series, width: int = 132, height: int = 36, pad: float = 4) -> Trend | None:
    """Lay a series' last results out on a time axis; None with fewer than two numeric results."""
    points = [(i.date, v) for i in reversed(series.items) if i.date and (v := _values(i))][-TREND_POINTS:]
    if len(points) < 2 or len({len(v) for _, v in points}) != 1:
        return None
    start, end = points[0][0], points[-1][0]
    span = (end - start).total_seconds() or 1.0
    low = min(min(v) for _, v in points)
    high = max(max(v) for _, v in points)
    scale = (high - low) or 1.0

    def xy(when: dt.datetime, value: float) -> tuple[float, float]:
        x = pad + (when - start).total_seconds() / span * (width - 2 * pad)
        y = pad + (high - value) / scale * (height - 2 * pad) if high != low else height / 2
        return round(x, 1), round(y, 1)

    lines = [" ".join(f"{x},{y}" for x, y in (xy(when, values[n]) for when, values in points))
             for n in range(len(points[0][1]))]
    dots = [xy(points[-1][0], value) for value in points[-1][1]]
    dated = [i for i in reversed(series.items) if i.date and _values(i)][-TREND_POINTS:]
    first, last = dated[0], dated[-1]
    label = (f"{series.name}: {len(points)} results, from {first.fields['value']} on {first.date:%b %-d, %Y} "
             f"to {last.fields['value']} on {last.date:%b %-d, %Y}")
    return Trend(width=width, height=height, lines=lines, dots=dots, label=label)


def _series(observations: list[Item]) -> list[Series]:
    by_code: dict[tuple[str, str], Series] = {}
    for item in observations:  # newest first already
        # One series per test and unit: a trend never joins kilograms to pounds.
        key = (item.fields["code"] or item.title, item.fields["unit"])
        series = by_code.setdefault(key, Series(code=item.fields["code"], name=item.title, vital=item.fields["vital"]))
        series.items.append(item)
    for series in by_code.values():
        series.trend = trend_build(series=series)
    rank = {code: n for n, code in enumerate(TREND_FIRST)}
    return sorted(by_code.values(), key=lambda s: (rank.get(s.code, len(rank)), s.trend is None, s.name.lower()))


def _latest_by(items: list[Item], key) -> list[Item]:
    """Keep the newest item of each key (items are newest first)."""
    seen: dict[str, Item] = {}
    for item in items:
        seen.setdefault(key(item), item)
    return list(seen.values())


def _medications(*, history: History, since: dt.datetime) -> tuple[list[MedicationLine], list[FillLine]]:
    """Return the active medications with their last fill, and the drugs filled since ``since``
    that no active prescription names (a payer may send pharmacy claims and no prescriptions).

    A prescription's "active" status may be years old; the last fill says whether it is taken.
    """
    fills = [c for c in history.claims if c.fields["type_code"] == "pharmacy" and c.date]  # newest first
    last_fill: dict[str, Item] = {}
    for claim in fills:
        for code in claim.fields["rxnorm"]:
            last_fill.setdefault(code, claim)
    active = _latest_by(history.active_medications, lambda m: m.title.lower())
    lines = [MedicationLine(item=m, last_fill=last_fill.get(m.fields["rxnorm"])) for m in active]
    prescribed = {m.fields["rxnorm"] for m in active if m.fields["rxnorm"]} | {m.title.lower() for m in active}
    recent: dict[str, FillLine] = {}
    for claim in fills:
        name = (claim.fields["services"] or ["Drug not named by the source"])[0]
        key = next(iter(claim.fields["rxnorm"]), name.lower())
        if claim.date < since or key in prescribed or name.lower() in prescribed:
            continue
        line = recent.setdefault(key, FillLine(latest=claim, name=name, fills=0))
        line.fills += 1
    return lines, list(recent.values())


def _readable_only(history: History) -> History:
    """Return the history without the records that could not be read (the tabs list them)."""
    keep = lambda items: [i for i in items if i.readable]  # noqa: E731
    return dataclasses.replace(
        history, encounters=keep(history.encounters), conditions=keep(history.conditions),
        medications=keep(history.medications), allergies=keep(history.allergies),
        immunizations=keep(history.immunizations), observations=keep(history.observations),
        prior_auths=keep(history.prior_auths), claims=keep(history.claims),
    )


def summary_build(*, history: History, now: dt.datetime | None = None) -> Summary:
    """Return the summary of a patient's history."""
    now = now or timezone.now()
    history = _readable_only(history)
    recent = now - dt.timedelta(days=RECENT_DAYS)
    # The newest record of each problem decides: an old "active" one resolved since is not active.
    problems = [c for c in _latest_by(history.conditions, lambda c: c.fields["code"] or c.title) if c.fields["active"]]
    # The problem list first, then other active diagnoses; each group newest first.
    problems.sort(key=lambda c: not c.fields["problem_list"])
    vaccines: dict[str, VaccineLine] = {}
    for item in history.immunizations:
        if item.fields["given"]:
            line = vaccines.setdefault(item.fields["code"] or item.title, VaccineLine(latest=item, doses=0))
            line.doses += 1

    def pa_relevant(pa: Item) -> bool:
        if pa.fields["open"]:
            return True
        dates = [d for d in (pa.fields["requested"], pa.fields["decided"], pa.date) if d]
        return any(d >= recent for d in dates) or bool(pa.fields["period_end"] and pa.fields["period_end"] >= now)

    series = _series([o for o in history.observations if o.fields["valid"]])
    medications, recent_fills = _medications(history=history, since=now - dt.timedelta(days=RECENT_FILL_DAYS))
    return Summary(
        problems=problems,
        medications=medications,
        recent_fills=recent_fills,
        allergies=[a for a in history.allergies if a.fields["active"]],
        immunizations=list(vaccines.values()),
        vitals=[s for s in series if s.vital],
        labs=[s for s in series if not s.vital],
        encounters=[e for e in history.encounters if e.fields["happened"]][:5],
        prior_auths=[pa for pa in history.prior_auths if pa_relevant(pa)][:6],
    )
