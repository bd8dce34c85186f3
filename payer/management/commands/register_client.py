"""Register a SMART Backend Services client for a provider organization."""

import json
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from payer.models import ProviderOrganization
from payer.services.auth import client_register


class Command(BaseCommand):
    help = "Register a provider system's public keys; print the new client_id alone on the last line."

    def add_arguments(self, parser):
        parser.add_argument("--organization-npi", required=True)
        keys = parser.add_mutually_exclusive_group(required=True)
        keys.add_argument("--jwks-url", help="Where the client serves its public JWKS.")
        keys.add_argument("--jwks-file", type=Path, help="A file holding the client's public JWKS.")
        parser.add_argument(
            "--scope", action="append", default=None,
            help="A scope the client may be granted (repeatable; default system/*.read).",
        )
        parser.add_argument("--name", default="")

    def handle(self, *args, organization_npi, jwks_url, jwks_file, scope, name, **options):
        organization = ProviderOrganization.objects.filter(npi=organization_npi).first()
        if organization is None:
            raise CommandError(f"No provider organization has NPI {organization_npi}.")
        jwks = None
        if jwks_file is not None:
            try:
                jwks = json.loads(jwks_file.read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"Cannot read a JWKS from {jwks_file}: {exc}") from None
        try:
            client = client_register(
                organization=organization, jwks=jwks, jwks_url=jwks_url or "",
                scopes=scope or ["system/*.read"], name=name,
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"Registered {client.name} for {organization.name} (NPI {organization.npi}) "
                          f"with scopes {client.scopes}.")
        self.stdout.write(client.client_id)
