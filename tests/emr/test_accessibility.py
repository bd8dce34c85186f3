"""Issue 14: no serious or critical axe-core violation on any EMR page, in any state.

One headless Chromium page visits every EMR page in each state a clinician meets (signed
out, an error, empty, filled in, every history tab, a checked link that failed, sharing
ended, a fetch in progress or failed, another organization's patient), then every
same-origin ``/emr/`` link found on those pages, so that a page added later is checked
without editing this test. axe-core comes from the npm registry (tests/axe.py).
"""

import datetime as dt
from urllib.parse import urldefrag, urljoin, urlsplit

import pytest
from django.utils import timezone

from emr.models import PatientSync
from provider.models import PayerConnection, SyncJob
from tests import factories
from tests.axe import (
    AXE_VERSION,
    assert_no_serious_violations,
    axe_violations,
    serious,
    violations_report,
)
from tests.browser import chromium, login
from tests.emr.history_data import history_store

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

GRACE_NPI = "1234567893"  # the factories' default organization
# Links that change something or answer JSON: never followed by the crawl.
NOT_PAGES = ("/emr/logout/", "/fetch/", "/member-id/", "/syncs/")
MAX_PAGES = 80
# axe-core reports an ARIA reference to an id that is not on the page only as "needs review"
# (the element might come later); on a rendered page it is a description or name lost.
BROKEN_REFERENCES = """() => [...document.querySelectorAll(
    '[aria-describedby], [aria-labelledby], [aria-controls], label[for]')].flatMap(element =>
  ['aria-describedby', 'aria-labelledby', 'aria-controls', 'for'].flatMap(name =>
    (element.getAttribute(name) || '').split(/\\s+/).filter(id => id && !document.getElementById(id))
      .map(id => `- ${name}="${id}" names no element: ${element.outerHTML.slice(0, 160)}`)))"""


def job_create(patient, connection, status: str, *, patient_ids=(), error: str = "", minutes_ago: int = 0) -> SyncJob:
    """Record a fetch of the patient, as the EMR's fetch would, ended ``minutes_ago``."""
    when = timezone.now() - dt.timedelta(minutes=minutes_ago)
    job = SyncJob.objects.create(
        connection=connection, level="group", scope_key=f"a11y|{patient.pk}|{status}", member_id=patient.member_id,
        status=status, patient_ids=list(patient_ids), error=error,
        finished_at=when if status in (SyncJob.Status.COMPLETED, SyncJob.Status.NO_DATA, SyncJob.Status.FAILED) else None,
    )
    SyncJob.objects.filter(pk=job.pk).update(created_at=when)
    PatientSync.objects.create(patient=patient, job=job)
    return job


class Audit:
    """Run axe-core on each page visited and keep what fails; report them all at once."""

    def __init__(self, page, base_url: str) -> None:
        self.page, self.base_url = page, base_url
        self.failures: list[str] = []
        self.checked: list[str] = []
        self.seen: set[str] = set()  # URLs checked
        self.links: dict[str, str] = {}  # URL -> the label of the first page that links to it

    def check(self, label: str) -> None:
        self.page.wait_for_load_state("load")
        found = serious(axe_violations(self.page))
        broken = self.page.evaluate(BROKEN_REFERENCES)
        self.checked.append(label)
        self.seen.add(self.page.url)
        if found or broken:
            self.failures.append(f"{label} ({self.page.url}):\n" + "\n".join([violations_report(found), *broken]).strip())
        for href in self.page.eval_on_selector_all("a[href]:not([href^='#'])", "links => links.map(a => a.getAttribute('href'))"):
            url = urldefrag(urljoin(self.page.url, href)).url
            path = urlsplit(url).path
            if (url.startswith(self.base_url) and path.startswith("/emr/")
                    and not any(part in path for part in NOT_PAGES)):
                self.links.setdefault(url, label)

    def visit(self, path: str, label: str, *, status: int = 200, shows: str = "") -> None:
        """Open the page, make sure it is in the state meant (``shows``: a selector), check it."""
        response = self.page.goto(f"{self.base_url}{path}")
        assert response is not None and response.status == status, (label, path, response and response.status)
        if shows:
            self.page.locator(shows).first.wait_for(state="attached")
        self.check(label)

    def crawl(self) -> None:
        """Check every linked EMR page not checked yet, and the pages those link to."""
        while pending := [url for url in self.links if url not in self.seen]:
            for url in pending:
                self.seen.add(url)
                assert len(self.seen) <= MAX_PAGES, f"more than {MAX_PAGES} EMR pages linked: {sorted(self.seen)}"
                response = self.page.goto(url)
                if response is None or "text/html" not in (response.headers.get("content-type") or ""):
                    continue
                self.check(f"linked from {self.links[url]}: {url}")


def test_every_emr_page_has_no_serious_or_critical_axe_violation(live_server, settings):
    settings.AXES_FAILURE_LIMIT = 3  # the locked sign-in page, last, after few attempts
    connection = PayerConnection.objects.create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url="http://payer.example/fhir",
        client_id="grace", private_key_path="/nonexistent.pem", key_id="k1", organization_npi=GRACE_NPI,
    )
    smith = factories.clinician_create(username="jsmith", password="grace-demo")
    smith.npi = "1987654328"  # so the attestation checkboxes show
    smith.save(update_fields=["npi"])
    # Jack: a fetched history. Maria: never fetched. Dana: registered with Jack's member id,
    # so the checked link fails. Ann: fetched, then the payer stopped sharing her.
    history_store(connection=connection, patient_id="pat-jack", member_id="UCH100000001")
    jack = factories.hospital_patient_create(insurer=connection, member_id="UCH100000001", payer_patient_id="pat-jack")
    maria = factories.hospital_patient_create(family="Gonzalez", given="Maria", insurer=connection, member_id="UCH100000003")
    dana = factories.hospital_patient_create(family="Rivera", given="Dana", birth_date=dt.date(1970, 5, 5),
                                             insurer=connection, member_id="UCH100000001", payer_patient_id="pat-jack")
    # (Ann's plan is another connection: history_data's resource ids are the same for everyone.)
    meridian = PayerConnection.objects.create(
        name="meridian", display_name="Meridian Health Plan", fhir_base_url="http://meridian.example/fhir",
        client_id="grace", private_key_path="/nonexistent.pem", key_id="k1", organization_npi=GRACE_NPI,
    )
    history_store(connection=meridian, patient_id="pat-ann", member_id="MHP-5", family="Lee", given="Ann")
    ann = factories.hospital_patient_create(family="Lee", given="Ann", insurer=meridian, member_id="MHP-5")
    job_create(ann, meridian, SyncJob.Status.COMPLETED, patient_ids=["pat-ann"], minutes_ago=60)
    ann.payer_patient_id = "pat-ann"
    ann.save(update_fields=["payer_patient_id"])
    job_create(ann, meridian, SyncJob.Status.NO_DATA, minutes_ago=5)
    failed = factories.hospital_patient_create(family="Nguyen", given="Bao", insurer=connection, member_id="UCH100000007")
    job_create(failed, connection, SyncJob.Status.FAILED, error="Connection refused")
    waiting = factories.hospital_patient_create(family="Okafor", given="Daniel", insurer=connection, member_id="UCH100000070")
    job_create(waiting, connection, SyncJob.Status.PENDING)
    uninsured = factories.hospital_patient_create(family="Park", given="Min")
    elsewhere = factories.hospital_patient_create(organization_npi="9999999991", family="Shawcross", given="Other")

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        audit = Audit(page, live_server.url)

        audit.visit("/emr/login/", "sign-in")
        page.get_by_label("Username").fill("jsmith")
        page.get_by_label("Password").fill("wrong")
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("alert").wait_for()
        audit.check("sign-in, wrong password")
        login(page, live_server.url, username="jsmith", password="grace-demo")
        audit.check("patient list")
        audit.visit("/emr/?name=nobody-by-this-name", "patient list, a search that finds none")
        audit.visit("/emr/?birth_date=not-a-date", "patient list, an invalid search")

        audit.visit("/emr/patients/add/", "register patient")
        page.get_by_label("Date of birth").fill("2999-01-01")
        page.get_by_role("button", name="Register").click()
        page.locator(".errorlist").first.wait_for()
        audit.check("register patient, submitted with errors")
        for name, value in (("Given name", "Lena"), ("Family name", "Berg"), ("Date of birth", "1980-01-01"),
                            ("Member id", "UCH100000011")):
            page.get_by_label(name).fill(value)
        page.get_by_label("Gender").select_option("female")
        page.get_by_label("Insurer").select_option(label="UnitedCare Health")
        page.get_by_role("button", name="Register").click()
        page.get_by_role("status").filter(has_text="is registered with").wait_for()
        audit.check("patient page after registering, with its message")

        # Where a state shows is for the templates to decide (others rewrite the history and
        # the fetch panel): ``shows`` only where its words are the state itself.
        audit.visit(f"/emr/patients/{maria.pk}/", "patient, before any fetch")
        audit.visit(f"/emr/patients/{uninsured.pk}/", "patient, no insurer on file")
        # As the page's script shows it: after its first poll of the job.
        with page.expect_response(lambda response: "/syncs/" in response.url):
            page.goto(f"{live_server.url}/emr/patients/{waiting.pk}/")
        audit.check("patient, a fetch in progress")
        audit.visit(f"/emr/patients/{failed.pk}/", "patient, a failed fetch", shows="text=Connection refused")
        audit.visit(f"/emr/patients/{dana.pk}/", "patient, the payer's record is another person's",
                    shows=".link-mismatch")
        audit.visit(f"/emr/patients/{ann.pk}/", "patient, no longer shared by the payer", shows="text=/no longer shar/i")

        audit.visit(f"/emr/patients/{jack.pk}/", "patient with history", shows="text=Lakeview Cardiology Clinic")
        tabs = page.get_by_role("tab")
        names = [tabs.nth(i).get_attribute("id") or tabs.nth(i).inner_text() for i in range(tabs.count())]
        assert len(names) >= 5, names
        for i, name in enumerate(names):
            tabs.nth(i).click()
            assert tabs.nth(i).get_attribute("aria-selected") == "true"
            audit.check(f"patient with history, tab {name!r}")
        # The timeline alone, so that its findings (any impact) are reported apart: in view
        # through the tab whose panel holds it.
        timeline: list[dict] = []
        if page.locator("svg.timeline").count():
            panel = page.locator("svg.timeline").first.evaluate("svg => svg.closest('[role=tabpanel]')?.id || ''")
            if panel:
                page.locator(f'[role=tab][aria-controls="{panel}"]').click()
            timeline = axe_violations(page, context="svg.timeline")
        audit.visit(f"/emr/patients/{jack.pk}/encounters/enc-3/", "encounter detail", shows="text=CLM-ENC-3")
        audit.visit(f"/emr/patients/{elsewhere.pk}/", "another organization's patient (404)", status=404)
        audit.visit(f"/emr/patients/{jack.pk}/encounters/no-such-encounter/", "an unknown encounter (404)", status=404)

        page.set_viewport_size({"width": 390, "height": 844})
        audit.visit(f"/emr/patients/{jack.pk}/", "patient with history, 390 px wide")
        audit.visit("/emr/", "patient list, 390 px wide")
        page.set_viewport_size({"width": 1280, "height": 900})

        audit.crawl()

        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(f"{live_server.url}/emr/login/")
        audit.check("signed out")
        for _ in range(settings.AXES_FAILURE_LIMIT):
            page.get_by_label("Username").fill("intruder")
            page.get_by_label("Password").fill("wrong")
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_load_state("load")
        assert "Sign-in paused" in page.content()
        audit.check("sign-in paused after failed attempts")

    print(f"\naxe-core {AXE_VERSION} on {len(audit.checked)} EMR page states:", *audit.checked, sep="\n  ")
    print("The timeline alone, every impact:", violations_report(timeline) or "no violation")
    assert not audit.failures, (f"axe-core {AXE_VERSION}: serious or critical violations (or broken id references) on "
                                f"{len(audit.failures)} of {len(audit.checked)} EMR page states:\n\n"
                                + "\n\n".join(audit.failures))
    assert errors == []


def test_the_axe_harness_reports_serious_violations():
    with chromium() as browser:
        page = browser.new_page()
        page.set_content('<!doctype html><html lang="en"><head><title>Harness</title></head><body><main>'
                         '<h1>Harness</h1><img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">'
                         '<input type="text" name="q">'
                         '<p style="color:#aaa;background:#fff">Too faint to read</p></main></body></html>')
        found = {v["id"]: v for v in serious(axe_violations(page))}
        assert {"image-alt", "label", "color-contrast"} <= found.keys(), found.keys()
        assert found["image-alt"]["nodes"][0]["target"] == ["img"]
        with pytest.raises(pytest.fail.Exception) as failed:
            assert_no_serious_violations(page, "the harness page")
        message = str(failed.value)
        assert "serious or critical accessibility violations on the harness page" in message
        assert "- image-alt (critical): Images must have alternative text" in message and "<img src=" in message
        assert "- color-contrast (serious)" in message and "Too faint to read" in message
        # A clean page passes.
        page.set_content('<!doctype html><html lang="en"><head><title>Harness</title></head><body><main>'
                         '<h1>Harness</h1><label>Query <input type="text" name="q"></label></main></body></html>')
        assert_no_serious_violations(page, "a clean page")
