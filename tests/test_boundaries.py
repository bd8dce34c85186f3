"""The payer and the hospital are two organisations: their apps meet only over HTTP."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("app", "forbidden"),
    [("payer", ("provider", "emr")), ("storage", ("provider", "emr")), ("provider", ("payer", "storage", "emr")),
     ("emr", ("payer", "storage")), ("fhirkit", ("payer", "storage", "provider", "emr"))],
)
def test_app_never_imports_the_other_side(app, forbidden):
    prefixes = tuple(f"{verb} {name}" for name in forbidden for verb in ("from", "import"))
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in (ROOT / app).rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if line.lstrip().startswith(prefixes) and line.lstrip().split()[1].split(".")[0] in forbidden
    ]
    assert offenders == []
