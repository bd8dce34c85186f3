"""SQL that makes tables append-only in the database itself, for the migrations.

The admin already offers no change or delete of these rows; the triggers make the database
refuse them too, so neither a bug nor a stray ``queryset.delete()`` can erase the record the
rule asks for. SQLite tests flush with DELETE, so the SQLite triggers stand aside while
``<app>_flush_window`` holds a row (tests/conftest.py writes one around each flush only).
"""

MESSAGE = "append-only record: {table} rows cannot be changed or deleted"


def sqlite_refuse(*, app: str, table: str, event: str, when: str = "1") -> tuple[str, str]:
    """Return (create, drop) SQL of a SQLite trigger refusing ``event`` on ``table`` when ``when``."""
    name = f"{table}_no_{event.lower()}"
    create = (
        f"CREATE TRIGGER {name} BEFORE {event} ON {table} "
        f"WHEN ({when}) AND NOT EXISTS (SELECT 1 FROM {app}_flush_window) "
        f"BEGIN SELECT RAISE(ABORT, '{MESSAGE.format(table=table)}'); END;"
    )
    return create, f"DROP TRIGGER IF EXISTS {name};"


def postgres_refuse(*, table: str, event: str, when: str = "", function: str = "pa_refuse_change") -> tuple[str, str]:
    """Return (create, drop) SQL of a Postgres trigger calling ``function`` on ``event``."""
    name = f"{table}_no_{event.lower()}"
    condition = f"WHEN ({when}) " if when else ""
    create = f"CREATE TRIGGER {name} BEFORE {event} ON {table} FOR EACH ROW {condition}EXECUTE FUNCTION {function}();"
    return create, f"DROP TRIGGER IF EXISTS {name} ON {table};"


POSTGRES_REFUSE_FUNCTION = """
CREATE OR REPLACE FUNCTION pa_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'append-only record: % rows cannot be changed or deleted', TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END $$;
"""
