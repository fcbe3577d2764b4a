-- pgshift control schema. Idempotent: run by `pgshift init` and before `start`.
CREATE SCHEMA IF NOT EXISTS pgshift;
COMMENT ON SCHEMA pgshift IS 'pgshift control schema: migration history, plans, backfill progress, trigger functions';

CREATE TABLE IF NOT EXISTS pgshift.migrations (
    schema          name        NOT NULL,
    name            text        NOT NULL,
    parent          text,
    version_schema  text        NOT NULL,
    contents        text        NOT NULL,
    checksum        text        NOT NULL,
    migration       jsonb       NOT NULL,
    plan            jsonb       NOT NULL,
    phase           text        NOT NULL CHECK (phase IN ('starting', 'backfilling', 'active', 'completing', 'complete', 'rolling_back')),
    step            integer     NOT NULL DEFAULT 0,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    backfilled_at   timestamptz,
    completed_at    timestamptz,
    PRIMARY KEY (schema, name)
);

-- At most one migration in progress per schema.
CREATE UNIQUE INDEX IF NOT EXISTS migrations_one_active ON pgshift.migrations (schema) WHERE phase <> 'complete';

CREATE TABLE IF NOT EXISTS pgshift.backfills (
    schema      name        NOT NULL,
    migration   text        NOT NULL,
    table_name  text        NOT NULL,
    key_columns text[]      NOT NULL,
    upper_key   text[],
    last_key    text[],
    rows_done   bigint      NOT NULL DEFAULT 0,
    rows_total  bigint      NOT NULL DEFAULT 0,
    batches     bigint      NOT NULL DEFAULT 0,
    done        boolean     NOT NULL DEFAULT false,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema, migration, table_name),
    FOREIGN KEY (schema, migration) REFERENCES pgshift.migrations (schema, name) ON DELETE CASCADE
);

-- One backfill batch: the copier's UPDATE of a key range (`stmt`, which
-- reads its key bounds as $1[i] from `args`) and the move of the table's
-- progress row, in one transaction and one round trip. ROW_COUNT counts the
-- rows without collecting them (an UPDATE ... RETURNING in a CTE costs the
-- batch several percent). A NULL `mark` leaves the mark where it is (a
-- share of a batch that several workers run). SECURITY INVOKER: the
-- caller's own rights.
CREATE OR REPLACE FUNCTION pgshift.backfill_batch(stmt text, args text[], mark text[], s name, m text, t text)
RETURNS bigint LANGUAGE plpgsql AS $fn$
DECLARE
    n bigint;
BEGIN
    EXECUTE stmt USING args;
    GET DIAGNOSTICS n = ROW_COUNT;
    UPDATE pgshift.backfills
       SET last_key = coalesce(mark, last_key), rows_done = rows_done + n, batches = batches + 1, updated_at = now()
     WHERE schema = s AND migration = m AND table_name = t;
    RETURN n;
END
$fn$;

-- Running daemons: a heartbeat every second with their proxy's sessions, and
-- the last gate request they carried out. Rows older than a few seconds are
-- dead daemons and are ignored.
CREATE TABLE IF NOT EXISTS pgshift.daemons (
    id          text        PRIMARY KEY,
    schema      name        NOT NULL,
    listen      text        NOT NULL,
    sessions    jsonb       NOT NULL DEFAULT '[]',
    gate_ack    text,
    throttle    text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Live copier settings (pause, rate limit, batch target, throttle bounds),
-- written by `pgshift pause|resume|set` and the admin console, read by daemons.
CREATE TABLE IF NOT EXISTS pgshift.settings (
    schema      name        NOT NULL,
    key         text        NOT NULL,
    value       text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema, key)
);

-- Lock attempts of DDL steps by outcome (granted, timed_out, exhausted), so
-- daemons can export what CLI runs went through.
CREATE TABLE IF NOT EXISTS pgshift.lock_stats (
    schema      name        NOT NULL,
    outcome     text        NOT NULL,
    attempts    bigint      NOT NULL DEFAULT 0,
    PRIMARY KEY (schema, outcome)
);

CREATE TABLE IF NOT EXISTS pgshift.version (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version     integer NOT NULL,
    initialized_at timestamptz NOT NULL DEFAULT now()
);
-- The version this file installs (state::SCHEMA_VERSION): commands skip this
-- whole file when the stored version is already this one.
INSERT INTO pgshift.version (version) VALUES (4)
    ON CONFLICT (singleton) DO UPDATE SET version = greatest(pgshift.version.version, EXCLUDED.version);
