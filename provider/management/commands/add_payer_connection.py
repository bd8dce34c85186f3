"""Register (or update) a payer's Bulk Data server for this hospital."""

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from provider.models import PayerConnection
from provider.services.connections import payer_connection_create


class Command(BaseCommand):
    help = "Register a payer's Bulk Data server (SMART Backend Services client). The key stays in its PEM file."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--name", required=True, help="Short slug, e.g. unitedcare.")
        parser.add_argument("--display-name", required=True)
        parser.add_argument("--fhir-base-url", required=True)
        parser.add_argument("--client-id", required=True)
        parser.add_argument("--private-key-path", required=True, help="PEM file (kept out of the database).")
        parser.add_argument("--key-id", required=True, help="The kid of the key in the registered JWKS.")
        parser.add_argument("--algorithm", choices=["RS384", "ES384"], default="RS384")
        parser.add_argument("--scopes", default="system/*.read")
        parser.add_argument("--token-url", default="", help="Empty: discovered from .well-known/smart-configuration.")
        parser.add_argument("--organization-npi", default="",
                            help="NPI of the organization whose client this is; only its clinicians may fetch through it.")
        parser.add_argument("--validation-level", choices=PayerConnection.ValidationLevel.values, default="full")

    def handle(self, *args, **options) -> None:
        try:
            connection = payer_connection_create(
                name=options["name"], display_name=options["display_name"], fhir_base_url=options["fhir_base_url"],
                client_id=options["client_id"], private_key_path=options["private_key_path"], key_id=options["key_id"],
                algorithm=options["algorithm"], scopes=options["scopes"], token_url=options["token_url"],
                validation_level=options["validation_level"], organization_npi=options["organization_npi"],
            )
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from None
        owner = f" for organization {connection.organization_npi}" if connection.organization_npi else " (no organization: not usable from the EMR)"
        self.stdout.write(self.style.SUCCESS(f"Payer connection {connection.name!r} → {connection.fhir_base_url}{owner}"))
