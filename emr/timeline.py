"""The encounter timeline: encounters on a years axis, one row per facility, as an inline SVG
the template draws (no script needed to read it; emr.js adds arrow-key moves between dots)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emr.history import Item

# FHIR R4 v3-ActCode, the codes Encounter.class uses.
ENCOUNTER_CLASSES = {
    "AMB": "Outpatient",
    "EMER": "Emergency",
    "IMP": "Inpatient",
    "ACUTE": "Inpatient acute",
    "NONAC": "Inpatient non-acute",
    "OBSENC": "Observation",
    "PRENC": "Pre-admission",
    "SS": "Short stay",
    "VR": "Virtual",
    "HH": "Home health",
    "FLD": "Field",
}


def encounter_timeline(*, encounters: list[Item], width: int = 1000) -> dict[str, Any] | None:
    """Lay encounters out on a years axis, one row per facility, for an inline SVG."""
    # Dates far from today (a typo's year 2202) would squeeze every other dot into a corner:
    # the table lists them, the timeline leaves them out.
    latest = dt.datetime.now(dt.UTC).year + 1
    dated = [e for e in encounters if e.date and 1900 <= e.date.year <= latest]
    if not dated:
        return None
    label_width, right_pad, row_height, top = 230, 20, 34, 30
    first_year = min(e.date.year for e in dated)
    last_year = max(e.date.year for e in dated) + 1
    start = dt.datetime(first_year, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(last_year, 1, 1, tzinfo=dt.UTC)
    span = (end - start).total_seconds()
    plot = width - label_width - right_pad

    def x(when: dt.datetime) -> float:
        return round(label_width + (when - start).total_seconds() / span * plot, 1)

    facilities: dict[str, int] = {}
    for e in sorted(dated, key=lambda e: e.date):
        facilities.setdefault(e.fields["facility"], len(facilities))
    height = top + row_height * len(facilities) + 10
    step = max(1, (last_year - first_year) // 10)
    years = [{"label": y, "x": x(dt.datetime(y, 1, 1, tzinfo=dt.UTC))} for y in range(first_year, last_year + 1, step)]
    rows = [
        {"label": name, "y": top + row_height * i + row_height / 2, "band_y": top + row_height * i, "odd": i % 2}
        for name, i in facilities.items()
    ]
    # Encounters close in time would hide each other: a dot goes to the first of three
    # lanes of its row (middle, above, below) where it does not touch the previous dot.
    lanes = (0, -9, 9)
    last_x: dict[tuple[int, int], float] = {}
    points = []
    for e in sorted(dated, key=lambda e: e.date):
        row, px = facilities[e.fields["facility"]], x(e.date)
        lane = next((lane for lane in lanes if px - last_x.get((row, lane), -1e9) >= 12), 0)
        last_x[(row, lane)] = px
        points.append(
            {
                "x": px,
                "y": top + row_height * row + row_height / 2 + lane,
                "item": e,
                "class_code": e.fields["class_code"] if e.fields["class_code"] in ENCOUNTER_CLASSES else "other",
            }
        )
    classes = sorted({(p["class_code"], p["item"].fields["class_label"]) for p in points})
    return {
        "width": width,
        "height": height,
        "label_width": label_width,
        "plot_end": width - right_pad,
        "row_height": row_height,
        "top": top,
        "years": years,
        "rows": rows,
        "points": points,
        "classes": classes,
        "facility_count": len(facilities),
        "first_year": first_year,
        "last_year": last_year - 1,
    }
