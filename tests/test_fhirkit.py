"""The shared FHIR plumbing: OperationOutcome errors and validation issues."""

import pytest
from fhir.resources.R4B.operationoutcome import OperationOutcome

from fhirkit.validation import resource_validate

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("path", ["/payer/fhir/NoSuchType", "/payer/fhir/Encounter/x/y/z", "/provider/fhir/a/b/c"])
def test_unknown_fhir_path_answers_operation_outcome_404(client, path):
    response = client.get(path)

    assert response.status_code == 404
    assert response["Content-Type"].startswith("application/fhir+json")
    outcome = OperationOutcome.model_validate(response.json())
    assert outcome.issue[0].code == "not-supported"


def test_validation_issue_expression_names_the_element():
    issues = resource_validate({"resourceType": "Encounter", "id": "e1", "status": "finished"})

    assert [issue["expression"] for issue in issues] == [["Encounter.class"]]
    assert issues[0]["code"] == "required"


def test_validation_of_list_element_keeps_its_index():
    issues = resource_validate(
        {
            "resourceType": "Encounter", "id": "e1", "status": "finished",
            "class": {"code": "AMB"}, "participant": [{"period": {"start": "not-a-date"}}],
        }
    )

    assert issues and issues[0]["expression"][0].startswith("Encounter.participant[0].period.start")


@pytest.mark.parametrize(
    ("resource", "code"),
    [([], "structure"), ({"id": "x"}, "required"), ({"resourceType": "Nope", "id": "x"}, "not-supported")],
)
def test_not_a_resource_is_reported_not_raised(resource, code):
    assert resource_validate(resource)[0]["code"] == code


def test_valid_resource_has_no_issues():
    assert resource_validate({"resourceType": "Patient", "id": "p1", "gender": "male"}) == []


@pytest.mark.parametrize("value", ["²", "٣", "1²", "-1", "x"])
def test_count_and_offset_accept_ascii_digits_only(value):
    # str.isdigit() is True for "²", which int() refuses: that was a 500.
    from fhirkit.bundles import count_parse, offset_parse
    from fhirkit.outcome import FHIRError

    with pytest.raises(FHIRError) as count_error:
        count_parse(value)
    with pytest.raises(FHIRError) as offset_error:
        offset_parse(value)
    assert count_error.value.status == offset_error.value.status == 400


def test_count_is_capped_even_past_the_integer_digit_limit():
    from fhirkit.bundles import count_parse, offset_parse

    assert count_parse("7") == 7 and count_parse("5000", maximum=1000) == 1000
    assert count_parse("9" * 5000, maximum=1000) == 1000
    assert offset_parse("12") == 12
