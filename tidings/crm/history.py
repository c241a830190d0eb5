"""The attribute history (``attribute_changes``), written by database triggers on ``contacts``.

Every writer changes contact attributes through the database (the importer, the API, the CLI,
journey ``update_contact`` steps, merges, a bulk ``COPY`` + upsert, a hand-written ``UPDATE``),
so the history is kept by the database itself: triggers on INSERT and on ``UPDATE OF
attributes`` record, per top-level key whose value changed, the new value (SQL NULL when the
key was removed) and when (PostgreSQL: per statement on INSERT, per changed row on UPDATE;
SQLite: per row). No writer can forget it, and a row whose attributes
did not change costs only the trigger's ``WHEN`` test (PostgreSQL) or nothing at all (an
``UPDATE`` that does not set ``attributes``, such as the scoring models').

When: the row's new ``updated_at`` if the writer set one (so a simulated clock, or an import
of historic data, dates the change as the writer does), else the database clock.

The history is the triggers' own table: its rows are written from the ``contacts`` row being
written, so a foreign key to ``contacts`` would only re-check what cannot be wrong (on
PostgreSQL it cost ~10 us a contact inserted with three attributes, a third of the insert,
benchmarks/README.md). Since migration 0018 it has none, and a third trigger deletes a
contact's history with the contact (the cascade the key gave).

SQLite drops triggers when a migration rebuilds ``contacts`` (``batch_alter_table``): such a
migration must call :func:`create_triggers` again afterwards.

>>> from alembic import op                                        # doctest: +SKIP
>>> create_triggers(op.get_bind())                                # doctest: +SKIP
"""

from __future__ import annotations

from sqlalchemy import Connection, text

_SQLITE_VALUE = "{doc} -> {each}.fullkey"  # the value's JSON text (SQLite >= 3.38)
_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'"

SQLITE_TRIGGERS = (
    f"""
CREATE TRIGGER tr_contacts_attribute_history_insert AFTER INSERT ON contacts
WHEN json_type(NEW.attributes) = 'object' AND NEW.attributes <> '{{}}'
BEGIN
  INSERT INTO attribute_changes (contact_id, key, value, changed_at)
  SELECT NEW.id, n.key, {_SQLITE_VALUE.format(doc="NEW.attributes", each="n")}, NEW.updated_at
  FROM json_each(NEW.attributes) AS n;
END
""",
    f"""
CREATE TRIGGER tr_contacts_attribute_history_update AFTER UPDATE OF attributes ON contacts
WHEN OLD.attributes IS NOT NEW.attributes
BEGIN
  INSERT INTO attribute_changes (contact_id, key, value, changed_at)
  SELECT NEW.id, n.key, {_SQLITE_VALUE.format(doc="NEW.attributes", each="n")},
         CASE WHEN NEW.updated_at IS NOT OLD.updated_at THEN NEW.updated_at ELSE {_SQLITE_NOW} END
  FROM json_each(CASE json_type(NEW.attributes) WHEN 'object' THEN NEW.attributes ELSE '{{}}' END)
       AS n
  WHERE (CASE json_type(OLD.attributes) WHEN 'object' THEN OLD.attributes -> n.fullkey END)
        IS NOT (NEW.attributes -> n.fullkey)
  UNION ALL
  SELECT NEW.id, o.key, NULL,
         CASE WHEN NEW.updated_at IS NOT OLD.updated_at THEN NEW.updated_at ELSE {_SQLITE_NOW} END
  FROM json_each(CASE json_type(OLD.attributes) WHEN 'object' THEN OLD.attributes ELSE '{{}}' END)
       AS o
  WHERE json_type(NEW.attributes) IS NOT 'object' OR json_type(NEW.attributes, o.fullkey) IS NULL;
END
""",
    """
CREATE TRIGGER tr_contacts_attribute_history_delete AFTER DELETE ON contacts
BEGIN
  DELETE FROM attribute_changes WHERE contact_id = OLD.id;
END
""",
)

POSTGRESQL_TRIGGERS = (
    # INSERT: one set-based insert per statement from the transition table (a multi-row
    # INSERT or COPY of new contacts pays once, not per row)
    """
CREATE FUNCTION tidings_attribute_history_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO attribute_changes (contact_id, key, value, changed_at)
  SELECT n.id, e.key, e.value, n.updated_at
  FROM new_rows AS n CROSS JOIN LATERAL jsonb_each(n.attributes) AS e
  WHERE jsonb_typeof(n.attributes) = 'object';
  RETURN NULL;
END
$$
""",
    # UPDATE: per row, and only for rows whose attributes changed (``UPDATE OF attributes`` and
    # the WHEN test run before any function call): an UPDATE of other columns (scores,
    # updated_at) costs nothing, an unchanged upsert only the comparison. Transition tables
    # cannot be combined with UPDATE OF; a statement-level trigger measured slower in every
    # case (benchmarks/README.md, "Attribute history").
    """
CREATE FUNCTION tidings_attribute_history_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
  at timestamptz := CASE WHEN NEW.updated_at IS DISTINCT FROM OLD.updated_at
                         THEN NEW.updated_at ELSE clock_timestamp() END;
BEGIN
  INSERT INTO attribute_changes (contact_id, key, value, changed_at)
  SELECT NEW.id, coalesce(a.key, b.key), a.value, at
  FROM jsonb_each(CASE WHEN jsonb_typeof(NEW.attributes) = 'object'
                       THEN NEW.attributes ELSE '{}' END) AS a
  FULL JOIN jsonb_each(CASE WHEN jsonb_typeof(OLD.attributes) = 'object'
                            THEN OLD.attributes ELSE '{}' END) AS b ON a.key = b.key
  WHERE a.value IS DISTINCT FROM b.value;
  RETURN NULL;
END
$$
""",
    # DELETE: per statement, one join with the deleted rows
    """
CREATE FUNCTION tidings_attribute_history_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  DELETE FROM attribute_changes AS h USING old_rows AS o WHERE h.contact_id = o.id;
  RETURN NULL;
END
$$
""",
    """
CREATE TRIGGER tr_contacts_attribute_history_insert AFTER INSERT ON contacts
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION tidings_attribute_history_insert()
""",
    """
CREATE TRIGGER tr_contacts_attribute_history_update AFTER UPDATE OF attributes ON contacts
FOR EACH ROW WHEN (OLD.attributes IS DISTINCT FROM NEW.attributes)
EXECUTE FUNCTION tidings_attribute_history_update()
""",
    """
CREATE TRIGGER tr_contacts_attribute_history_delete AFTER DELETE ON contacts
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION tidings_attribute_history_delete()
""",
)

#: The history before the triggers existed: each key's current value, dated the contact's
#: ``updated_at`` (the latest moment it may have changed; so ``has_been`` never overstates).
SQLITE_BACKFILL = f"""
INSERT INTO attribute_changes (contact_id, key, value, changed_at)
SELECT c.id, n.key, {_SQLITE_VALUE.format(doc="c.attributes", each="n")}, c.updated_at
FROM contacts AS c, json_each(c.attributes) AS n
WHERE json_type(c.attributes) = 'object'
"""
POSTGRESQL_BACKFILL = """
INSERT INTO attribute_changes (contact_id, key, value, changed_at)
SELECT c.id, n.key, n.value, c.updated_at
FROM contacts AS c, jsonb_each(c.attributes) AS n
WHERE jsonb_typeof(c.attributes) = 'object'
"""


TRIGGERS = tuple(f"tr_contacts_attribute_history_{op}" for op in ("insert", "update", "delete"))
FUNCTIONS = tuple(f"tidings_attribute_history_{op}" for op in ("insert", "update", "delete"))


def create_triggers(bind: Connection) -> None:
    """Install the history triggers on ``contacts`` (idempotent: replaces them)."""
    drop_triggers(bind)
    statements = SQLITE_TRIGGERS if bind.dialect.name == "sqlite" else POSTGRESQL_TRIGGERS
    for statement in statements:
        bind.execute(text(statement))


def drop_triggers(bind: Connection) -> None:
    for name in TRIGGERS:
        on = "" if bind.dialect.name == "sqlite" else " ON contacts"
        bind.execute(text(f"DROP TRIGGER IF EXISTS {name}{on}"))
    if bind.dialect.name != "sqlite":
        for function in FUNCTIONS:
            bind.execute(text(f"DROP FUNCTION IF EXISTS {function}()"))


def backfill(bind: Connection) -> None:
    """One row per key of every contact, dated its ``updated_at`` (see the module doc)."""
    bind.execute(text(SQLITE_BACKFILL if bind.dialect.name == "sqlite" else POSTGRESQL_BACKFILL))
