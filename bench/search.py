"""Benchmark the local FHIR API: ``Encounter?patient=...&_sort=-date`` over HTTP.

    .venv/bin/python bench/search.py --resources 1000000 [--requests 500]

Fills the store (Postgres, same database as bench/ingest.py) up to ``--resources`` with
generated data at the ``structure`` level if it holds fewer, starts the real Django WSGI
application on a threaded wsgiref server, logs in (a session cookie, as the EMR's
browser would), and times searches for random patients. Prints p50/p95/p99 latency.
Target: p95 < 50 ms with 1,000,000 resources stored.
"""

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ["DEBUG"] = "0"  # DEBUG keeps every query in memory and slows each request

import ingest as bench_ingest  # noqa: E402  (bench/ingest.py)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", bench_ingest.DEFAULT_DATABASE_URL))
    args = parser.parse_args()
    bench_ingest._setup_django(args.database_url)
    bench_ingest.database_ensure(args.database_url)

    import requests
    from django.contrib.auth import get_user_model
    from django.core.wsgi import get_wsgi_application
    from django.db import connection
    from django.test import Client

    from provider.models import LocalResource
    from provider.services.ingest import ndjson_ingest

    stored = LocalResource.objects.count()
    if stored < args.resources:
        print(f"filling the store: {stored:,} < {args.resources:,} resources")
        with tempfile.TemporaryDirectory(prefix="bench-search-") as folder:
            paths = bench_ingest.files_write(args.resources, Path(folder))
            payer, _ = bench_ingest._provenance()
            for kind, path in paths.items():
                with open(path, "rb") as stream:
                    ndjson_ingest(stream=stream, file_name=path.name, expected_type=kind, connection=payer,
                                  export_time=None, validation_level="structure")
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE provider_localresource")
        stored = LocalResource.objects.count()
    patients = LocalResource.objects.filter(resource_type="Patient").count()
    encounters = LocalResource.objects.filter(resource_type="Encounter").count()

    user, _ = get_user_model().objects.get_or_create(username="bench-emr")
    # The local FHIR API is for users allowed to read the whole store (provider/views/fhir.py).
    from django.contrib.auth.models import Permission

    user.user_permissions.add(Permission.objects.get(codename="view_localresource", content_type__app_label="provider"))
    client = Client()
    client.force_login(user)
    cookies = {"sessionid": client.cookies["sessionid"].value}
    connection.close()

    server = make_server("127.0.0.1", 0, get_wsgi_application(), server_class=_ThreadingServer,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_port}/provider/fhir"
    session = requests.Session()
    session.cookies.update(cookies)
    rng = random.Random(11)

    def one() -> tuple[float, int]:
        patient = f"p{rng.randrange(patients)}"
        started = time.perf_counter()
        response = session.get(f"{base}/Encounter", params={"patient": patient, "_sort": "-date"})
        elapsed = time.perf_counter() - started
        assert response.status_code == 200, response.text[:300]
        return elapsed, len(response.json().get("entry", []))

    for _ in range(20):  # warm up connections and caches
        one()
    timings, sizes = [], []
    for _ in range(args.requests):
        elapsed, size = one()
        timings.append(elapsed * 1000)
        sizes.append(size)
    server.shutdown()
    timings.sort()
    quantile = statistics.quantiles(timings, n=100)
    print(f"store            {stored:,} resources ({patients:,} patients, {encounters:,} encounters) on {connection.vendor}")
    print(f"query            GET Encounter?patient=...&_sort=-date, {args.requests} requests, "
          f"{statistics.mean(sizes):.1f} encounters per Bundle")
    print(f"latency          p50 {quantile[49]:.1f} ms, p95 {quantile[94]:.1f} ms, p99 {quantile[98]:.1f} ms, "
          f"max {timings[-1]:.1f} ms")


if __name__ == "__main__":
    main()
