"""Trigram indexes for the reviewer queue's free-text search on PostgreSQL.

The search is `icontains` on name, email and affiliation, which Django writes as
`UPPER(col::text) LIKE UPPER('%term%')`: a B-tree cannot serve it, a pg_trgm GIN index on the same
expression can. Creating the extension needs a privileged role; where it is refused the indexes are
skipped with a notice (the search still works, only slower), and an operator can add them later.
"""

from __future__ import annotations

from django.db import migrations

COLUMNS = ("full_name", "email", "affiliation")

FORWARD = """
DO $$
BEGIN
    BEGIN
        CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXCEPTION WHEN insufficient_privilege OR undefined_file THEN
        RAISE NOTICE 'pg_trgm is not available: the queue search runs without trigram indexes';
    END;
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'pg_trgm') THEN
{creates}
    END IF;
END
$$;
"""
CREATE = (
    "        CREATE INDEX IF NOT EXISTS access_application_{column}_trgm "
    "ON access_application USING gin ((UPPER({column}::text)) gin_trgm_ops);"
)
BACKWARD = "\n".join(f"DROP INDEX IF EXISTS access_application_{column}_trgm;" for column in COLUMNS)


def forward(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FORWARD.format(creates="\n".join(CREATE.format(column=c) for c in COLUMNS)))


def backward(apps, schema_editor):  # type: ignore[no-untyped-def]
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("access", "0003_grant_expiry_reminder")]
    operations = [migrations.RunPython(forward, backward)]
