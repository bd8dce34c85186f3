"""Benchmark generate_population: resources per second and peak memory.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/pa_bench .venv/bin/python bench/generate.py --members 10000

Runs the generator in this process and prints throughput, peak RSS (ru_maxrss) and the
machine's load average before and after (other processes share the CPUs with the database).
"""

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("DEBUG", "1")

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from payer.services.demo import GRACE_HOSPITAL_NPI, demo_today, providers_seed  # noqa: E402
from payer.services.population import population_generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--members", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=int(time.time()) % 10_000)
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    providers_seed()
    load_before = os.getloadavg()[0]
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    result = population_generate(members=args.members, seed=args.seed, today=demo_today(), grace_npi=GRACE_HOSPITAL_NPI)
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    records = result.clinical_resources + result.claims + result.claim_lines + result.prior_authorizations
    print(f"database        {connection.vendor}")
    print(f"members         {result.members} (seed {args.seed})")
    print(f"resources       {result.clinical_resources} FHIR resources, {result.claims} claims "
          f"({result.claim_lines} lines), {result.prior_authorizations} prior authorizations")
    print(f"elapsed         {elapsed:.1f} s")
    print(f"throughput      {result.clinical_resources / elapsed:,.0f} resources/s, {records / elapsed:,.0f} rows/s")
    print(f"peak RSS        {peak_mib:.0f} MiB (before generating: {rss_before / 1024:.0f} MiB)")
    print(f"load average    {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (1 min; {os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
