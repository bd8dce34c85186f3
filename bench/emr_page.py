"""Measure the EMR patient page (issue 14's summary and tabs) on a large history.

    .venv/bin/python bench/emr_page.py [--claims 5000] [--observations 1000] [--encounters 300] [--runs 5]
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pa_x .venv/bin/python bench/emr_page.py

Builds a scratch test database, stores one patient's history in the hospital's local store
(tests/emr/history_data.py's resources, repeated to the sizes asked), then times, over
``--runs`` runs:
- the floor: reading the same rows from the database, nothing else (the machine's limit
  for a page that must look at every row);
- building the history and its summary (``emr.history.patient_history`` + ``summary_build``);
- the whole page over Django's test client (summary tab, 25 encounters and claims a page).
Prints resources/s, the ratio of the floor to each, and the peak of Python memory
(tracemalloc) while the page is built.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(BASE_DIR))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ["DEBUG"] = "0"  # DEBUG keeps every query in memory and slows each request
os.environ.setdefault("SECRET_KEY", "bench-only")
os.environ.setdefault("LOG_LEVEL", "WARNING")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--claims", type=int, default=5000)
    parser.add_argument("--observations", type=int, default=1000)
    parser.add_argument("--encounters", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    import django

    django.setup()
    from django.db import connection
    from django.test.utils import setup_test_environment

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        run(args)
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)


def run(args: argparse.Namespace) -> None:
    from django.test import Client
    from django.utils import timezone

    from emr import history as history_reads
    from emr.summary import summary_build
    from provider.models import LocalResource, PayerConnection
    from tests import factories
    from tests.emr.history_data import _row, history_resources

    connection = PayerConnection.objects.create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url="http://payer.example/fhir",
        client_id="grace", private_key_path="/nonexistent.pem", key_id="k1", organization_npi="1234567893")
    base = history_resources(patient_id="pat-big", member_id="UC-BIG")
    by_type: dict[str, list[tuple[dict, str]]] = {}
    for resource, date in base:
        # Claims repeat; prior authorizations (EOBs too) stay as many as the base has.
        kind = "PriorAuthorization" if resource.get("use") == "preauthorization" else resource["resourceType"]
        by_type.setdefault(kind, []).append((resource, date))
    wanted = {"ExplanationOfBenefit": args.claims, "Observation": args.observations, "Encounter": args.encounters}
    rows = []
    for kind, pairs in by_type.items():
        count = wanted.get(kind, len(pairs))
        for n in range(count):
            resource, date = copy.deepcopy(pairs[n % len(pairs)])
            if n >= len(pairs):
                resource["id"] = f"{resource['id']}-{n}"
            about = resource["resourceType"] == "Patient" or "subject" in resource or "patient" in resource
            rows.append(_row(resource, connection=connection, patient_id="pat-big" if about else "", date=date or None))
    LocalResource.objects.bulk_create(rows, batch_size=2000)
    clinician = factories.clinician_create(username="bench")
    patient = factories.hospital_patient_create(insurer=connection, member_id="UC-BIG", payer_patient_id="pat-big")
    client = Client()
    client.force_login(clinician.user)
    total = LocalResource.objects.filter(connection=connection, patient_id="pat-big").count()

    def floor() -> None:
        list(LocalResource.objects.filter(connection=connection, resource_type__in=history_reads.HISTORY_TYPES,
                                          patient_id__in=["pat-big", "Patient/pat-big"]).values_list("resource", flat=True))

    def build() -> None:
        summary_build(history=history_reads.patient_history(patient=patient), now=timezone.now())

    def page() -> None:
        response = client.get(f"/emr/patients/{patient.pk}/")
        assert response.status_code == 200, response.status_code

    client.get(f"/emr/patients/{patient.pk}/")  # warm: templates compiled, connection open
    timings = {}
    for name, step in (("floor: read the rows", floor), ("history + summary", build), ("whole page", page)):
        seconds = []
        for _ in range(args.runs):
            started = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - started)
        timings[name] = statistics.median(seconds)
    tracemalloc.start()
    page()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()

    db = connection_vendor()
    print(f"EMR patient page, {total:,} resources of one patient ({args.claims:,} claims, {args.observations:,} "
          f"observations, {args.encounters:,} encounters), {db}, median of {args.runs} runs")
    base_seconds = timings["floor: read the rows"]
    for name, seconds in timings.items():
        print(f"  {name:24} {seconds * 1000:8.1f} ms  {total / seconds:10,.0f} resources/s  "
              f"ratio to the floor {base_seconds / seconds:5.2f}")
    print(f"  peak Python memory while the page is built: {peak / 2**20:.1f} MiB")
    html = client.get(f"/emr/patients/{patient.pk}/").content
    parts = html.split(b'role="tabpanel" id="panel-')[1:]
    by_tab = ", ".join(part.split(b'"', 1)[0].decode() + f" {len(part) / 1024:.0f}" for part in parts)
    print(f"  page size: {len(html) / 1024:.0f} KiB (KiB by tab: {by_tab})")


def connection_vendor() -> str:
    from django.db import connection

    return connection.vendor


if __name__ == "__main__":
    main()
