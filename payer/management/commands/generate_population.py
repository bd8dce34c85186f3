"""Generate a large synthetic member population for benchmarks."""

import time

from django.core.management.base import BaseCommand, CommandError

from payer.services.demo import GRACE_HOSPITAL_NPI, demo_today, providers_seed
from payer.services.population import population_generate


class Command(BaseCommand):
    help = "Stream N synthetic members with clinical records, claims and prior authorizations (deterministic per seed)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--members", type=int, required=True)
        parser.add_argument("--seed", type=int, default=1)

    def handle(self, *args, members: int, seed: int, **options) -> None:
        if members < 1:
            raise CommandError("--members must be at least 1.")
        providers_seed()
        started = time.perf_counter()
        try:
            result = population_generate(members=members, seed=seed, today=demo_today(), grace_npi=GRACE_HOSPITAL_NPI)
        except ValueError as error:
            raise CommandError(str(error)) from error
        elapsed = time.perf_counter() - started
        rows = result.clinical_resources + result.claims + result.prior_authorizations
        self.stdout.write(
            f"{result.members} members, {result.clinical_resources} clinical resources, {result.claims} claims "
            f"({result.claim_lines} lines), {result.prior_authorizations} prior authorizations in {elapsed:.1f} s "
            f"({result.clinical_resources / elapsed:.0f} resources/s, {rows / elapsed:.0f} records/s)"
        )
