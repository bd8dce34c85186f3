"""The hospital's access events are append-only in the database too.

A user's removal may still set ``user`` to NULL (on_delete=SET_NULL); no other change and no
DELETE is allowed. Same pattern as payer/migrations/0008_notices_audit.py, repeated here
because a hospital deployment has no payer app.
"""

from django.db import migrations

MESSAGE = "append-only record: emr_accessevent rows cannot be changed or deleted"
# Any change but user -> NULL.
CHANGED = ("NEW.id IS NOT OLD.id OR NEW.organization_npi IS NOT OLD.organization_npi OR NEW.patient_id IS NOT OLD.patient_id "
           "OR NEW.action IS NOT OLD.action OR NEW.detail IS NOT OLD.detail OR NEW.created_at IS NOT OLD.created_at "
           "OR NEW.user_id IS NOT NULL")
PG_CHANGED = CHANGED.replace(" IS NOT OLD.", " IS DISTINCT FROM OLD.")


def _statements(vendor: str) -> list[tuple[str, str]]:
    if vendor == "sqlite":
        guard = "NOT EXISTS (SELECT 1 FROM emr_flush_window)"
        return [
            ("CREATE TABLE IF NOT EXISTS emr_flush_window (id INTEGER PRIMARY KEY);", "DROP TABLE IF EXISTS emr_flush_window;"),
            (f"CREATE TRIGGER emr_accessevent_no_update BEFORE UPDATE ON emr_accessevent WHEN ({CHANGED}) AND {guard} "
             f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END;", "DROP TRIGGER IF EXISTS emr_accessevent_no_update;"),
            (f"CREATE TRIGGER emr_accessevent_no_delete BEFORE DELETE ON emr_accessevent WHEN {guard} "
             f"BEGIN SELECT RAISE(ABORT, '{MESSAGE}'); END;", "DROP TRIGGER IF EXISTS emr_accessevent_no_delete;"),
        ]
    if vendor == "postgresql":
        return [
            ("CREATE OR REPLACE FUNCTION emr_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
             f"RAISE EXCEPTION '{MESSAGE}' USING ERRCODE = 'integrity_constraint_violation'; END $$;",
             "DROP FUNCTION IF EXISTS emr_refuse_change() CASCADE;"),
            (f"CREATE TRIGGER emr_accessevent_no_update BEFORE UPDATE ON emr_accessevent FOR EACH ROW WHEN ({PG_CHANGED}) "
             "EXECUTE FUNCTION emr_refuse_change();", "DROP TRIGGER IF EXISTS emr_accessevent_no_update ON emr_accessevent;"),
            ("CREATE TRIGGER emr_accessevent_no_delete BEFORE DELETE ON emr_accessevent FOR EACH ROW "
             "EXECUTE FUNCTION emr_refuse_change();", "DROP TRIGGER IF EXISTS emr_accessevent_no_delete ON emr_accessevent;"),
        ]
    return []


def _create(apps, schema_editor) -> None:
    for create, _drop in _statements(schema_editor.connection.vendor):
        schema_editor.execute(create, params=None)


def _drop(apps, schema_editor) -> None:
    for _create, drop in reversed(_statements(schema_editor.connection.vendor)):
        schema_editor.execute(drop, params=None)


class Migration(migrations.Migration):
    dependencies = [("emr", "0002_link_check")]
    operations = [migrations.RunPython(_create, _drop)]
