"""Numbered schema migrations, run at start-up; each is idempotent and runs in one transaction.

A migration may be run against a database that already has some or all of its effect (a
crash between its DDL and its bookkeeping row, or an operator running it twice): every
`CREATE` says `IF NOT EXISTS` and every added column is guarded by a look at the table's
current columns. Never edit a landed migration; append a new one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

import sqlite_utils

Migration = Callable[[sqlite_utils.Database], None]


def add_column(db: sqlite_utils.Database, table: str, column: str, sql_type: str) -> None:
    """`ALTER TABLE … ADD COLUMN`, unless the column is already there."""
    if column not in db.table(table).columns_dict:
        db.execute(f"ALTER TABLE [{table}] ADD COLUMN [{column}] {sql_type}")


def execute_all(db: sqlite_utils.Database, script: str) -> None:
    """Run `;`-separated statements one by one (`executescript` would COMMIT midway)."""
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def m001_initial(db: sqlite_utils.Database) -> None:
    execute_all(
        db,
        """
        CREATE TABLE IF NOT EXISTS agents (
            name TEXT PRIMARY KEY,
            role TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            runtime TEXT NOT NULL DEFAULT 'scripted',
            allowed_recipients TEXT,
            status_text TEXT NOT NULL DEFAULT '',
            status_set_at REAL,
            created_at REAL NOT NULL,
            started_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sender TEXT NOT NULL,
            recipient TEXT NOT NULL,
            body TEXT NOT NULL,
            in_reply_to INTEGER,
            thread INTEGER NOT NULL DEFAULT 0,
            kind TEXT NOT NULL DEFAULT 'message',
            state TEXT NOT NULL DEFAULT 'queued',
            attempts INTEGER NOT NULL DEFAULT 0,
            broadcast INTEGER NOT NULL DEFAULT 0,
            question_id INTEGER,
            lease TEXT,
            lease_expires REAL,
            created_at REAL NOT NULL,
            acked_at REAL
        );
        CREATE INDEX IF NOT EXISTS messages_inbox ON messages (recipient, state, id);
        CREATE INDEX IF NOT EXISTS messages_sender ON messages (sender, id);
        CREATE INDEX IF NOT EXISTS messages_thread ON messages (thread, id);
        CREATE UNIQUE INDEX IF NOT EXISTS messages_lease ON messages (lease)
            WHERE lease IS NOT NULL;
        CREATE INDEX IF NOT EXISTS messages_lease_expiry ON messages (lease_expires)
            WHERE state = 'leased';
        CREATE TABLE IF NOT EXISTS questions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            asker TEXT NOT NULL,
            target TEXT NOT NULL,
            question TEXT NOT NULL,
            options TEXT,
            multi INTEGER NOT NULL DEFAULT 0,
            asked_at REAL NOT NULL,
            expires_at REAL,
            state TEXT NOT NULL DEFAULT 'open',
            answer TEXT,
            answered_at REAL,
            message_id INTEGER NOT NULL
        );
        CREATE INDEX IF NOT EXISTS questions_asker ON questions (asker, state);
        CREATE INDEX IF NOT EXISTS questions_target ON questions (target, state);
        CREATE INDEX IF NOT EXISTS questions_expiry ON questions (expires_at)
            WHERE state = 'open' AND expires_at IS NOT NULL;
        CREATE TABLE IF NOT EXISTS approvals (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            agent TEXT NOT NULL,
            kind TEXT NOT NULL,
            description TEXT NOT NULL DEFAULT '',
            requested_by TEXT NOT NULL,
            requested_at REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            resolved_at REAL,
            note TEXT
        );
        CREATE INDEX IF NOT EXISTS approvals_requester ON approvals (requested_by, status);
        """,
    )


def m002_containers_and_turns(db: sqlite_utils.Database) -> None:
    add_column(db, "agents", "uid", "INTEGER")
    add_column(db, "agents", "paused", "INTEGER NOT NULL DEFAULT 0")
    add_column(db, "agents", "active_model", "TEXT NOT NULL DEFAULT ''")
    execute_all(
        db,
        """
        CREATE TABLE IF NOT EXISTS turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            agent TEXT NOT NULL,
            at REAL NOT NULL,
            ok INTEGER NOT NULL,
            result TEXT NOT NULL DEFAULT '',
            tool_calls TEXT NOT NULL DEFAULT '[]',
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            duration_ms INTEGER NOT NULL DEFAULT 0,
            message_id INTEGER
        );
        CREATE INDEX IF NOT EXISTS turns_agent ON turns (agent, id);
        """,
    )


def m003_reminders(db: sqlite_utils.Database) -> None:
    add_column(db, "messages", "reminder_id", "INTEGER")
    execute_all(
        db,
        """
        CREATE TABLE IF NOT EXISTS reminders (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            owner TEXT NOT NULL,
            body TEXT NOT NULL,
            body_file TEXT,
            due_at REAL NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending',
            created_at REAL NOT NULL,
            delivered_at REAL,
            message_id INTEGER
        );
        CREATE INDEX IF NOT EXISTS reminders_owner ON reminders (owner, state);
        CREATE INDEX IF NOT EXISTS reminders_due ON reminders (due_at) WHERE state = 'pending';
        """,
    )


def m004_reminder_delivery_errors(db: sqlite_utils.Database) -> None:
    # a failed attempt moves next_attempt_at past due_at (backoff); due_at stays what was asked
    add_column(db, "reminders", "last_error", "TEXT")
    add_column(db, "reminders", "attempt_count", "INTEGER NOT NULL DEFAULT 0")
    add_column(db, "reminders", "next_attempt_at", "REAL")
    execute_all(
        db,
        """
        UPDATE reminders SET next_attempt_at = due_at
            WHERE next_attempt_at IS NULL AND state = 'pending';
        DROP INDEX IF EXISTS reminders_due;
        CREATE INDEX IF NOT EXISTS reminders_next ON reminders (next_attempt_at)
            WHERE state = 'pending';
        """,
    )


def m005_approvals_and_deploys(db: sqlite_utils.Database) -> None:
    # m001's approvals table grows what carrying one out needs: the pinned commit (`sha`)
    # beside the ref the manager named, the diff shown to the operator, and what happened
    add_column(db, "agents", "deployed_sha", "TEXT")
    add_column(db, "approvals", "outcome", "TEXT NOT NULL DEFAULT ''")
    add_column(db, "approvals", "ref", "TEXT")
    add_column(db, "approvals", "sha", "TEXT")
    add_column(db, "approvals", "base_sha", "TEXT")
    add_column(db, "approvals", "diff", "TEXT NOT NULL DEFAULT ''")
    add_column(db, "approvals", "payload", "TEXT")
    execute_all(db, "CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, id)")


def m006_message_retries(db: sqlite_utils.Database) -> None:
    # a failed turn's message waits out a backoff (`not_before`) and, after `max_attempts`,
    # is `dead`: set aside with the reason of its last failure
    add_column(db, "messages", "failures", "INTEGER NOT NULL DEFAULT 0")
    add_column(db, "messages", "not_before", "REAL")
    add_column(db, "messages", "last_error", "TEXT")
    execute_all(
        db,
        "CREATE INDEX IF NOT EXISTS messages_dead ON messages (state, id) WHERE state = 'dead'",
    )


def m007_federation(db: sqlite_utils.Database) -> None:
    # docs/federation.md: a transactional outbox of envelopes to other hives, the ids of
    # envelopes received (the dedup key), the other hives' last rosters, and the origin's ids
    # of messages and questions that came from another hive (to thread replies, match answers)
    add_column(db, "messages", "remote_id", "INTEGER")
    add_column(db, "questions", "remote_id", "INTEGER")
    execute_all(
        db,
        """
        CREATE TABLE IF NOT EXISTS hive_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT OR IGNORE INTO hive_meta (key, value) VALUES ('epoch', lower(hex(randomblob(6))));
        CREATE TABLE IF NOT EXISTS federation_outbox (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            to_hive TEXT NOT NULL,
            kind TEXT NOT NULL,
            message_id INTEGER,
            body BLOB NOT NULL,
            created_at REAL NOT NULL,
            published_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            last_error TEXT
        );
        CREATE INDEX IF NOT EXISTS federation_outbox_pending ON federation_outbox (id)
            WHERE published_at IS NULL;
        CREATE TABLE IF NOT EXISTS federation_inbox (
            envelope_id TEXT PRIMARY KEY,
            origin TEXT NOT NULL,
            kind TEXT NOT NULL,
            received_at REAL NOT NULL,
            message_id INTEGER
        );
        CREATE INDEX IF NOT EXISTS federation_inbox_age ON federation_inbox (received_at);
        CREATE TABLE IF NOT EXISTS remote_hives (
            hive TEXT PRIMARY KEY,
            epoch TEXT NOT NULL,
            status_at REAL NOT NULL,
            heard_at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS remote_agents (
            hive TEXT NOT NULL,
            name TEXT NOT NULL,
            role TEXT NOT NULL,
            model TEXT NOT NULL DEFAULT '',
            runtime TEXT NOT NULL DEFAULT '',
            running INTEGER NOT NULL DEFAULT 0,
            container TEXT NOT NULL DEFAULT '',
            status_text TEXT NOT NULL DEFAULT '',
            status_set_at REAL,
            queued INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (hive, name)
        );
        CREATE INDEX IF NOT EXISTS messages_remote ON messages (remote_id)
            WHERE remote_id IS NOT NULL;
        CREATE INDEX IF NOT EXISTS questions_remote ON questions (asker, remote_id)
            WHERE remote_id IS NOT NULL
        """,
    )


def m008_operator_controls(db: sqlite_utils.Database) -> None:
    # docs/operating.md, "Operator controls": who a stale question was raised to; the
    # operator's budget limits, the alerts they raised, the agents they hold and the
    # operator's resumes past them; running usage totals per agent, kept by a trigger in the
    # same transaction as each turn, and an index that makes a rolling day a range scan.
    # The emergency stop itself is one row of `hive_meta` (key 'estop').
    add_column(db, "questions", "escalation", "TEXT NOT NULL DEFAULT '[]'")
    add_column(db, "questions", "escalated_at", "REAL")
    execute_all(
        db,
        """
        CREATE INDEX IF NOT EXISTS questions_open ON questions (asked_at) WHERE state = 'open';
        CREATE TABLE IF NOT EXISTS budget_limits (
            scope TEXT NOT NULL,
            agent TEXT NOT NULL DEFAULT '',
            key TEXT NOT NULL,
            value REAL,
            set_at REAL NOT NULL,
            PRIMARY KEY (scope, agent, key)
        );
        CREATE TABLE IF NOT EXISTS budget_alerts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            scope TEXT NOT NULL,
            agent TEXT NOT NULL DEFAULT '',
            key TEXT NOT NULL,
            level TEXT NOT NULL,
            used REAL NOT NULL,
            limit_value REAL NOT NULL,
            at REAL NOT NULL,
            text TEXT NOT NULL,
            state TEXT NOT NULL DEFAULT 'open',
            closed_at REAL
        );
        CREATE INDEX IF NOT EXISTS budget_alerts_open ON budget_alerts (scope, agent, key)
            WHERE state != 'cleared';
        CREATE TABLE IF NOT EXISTS budget_holds (
            agent TEXT PRIMARY KEY,
            reason TEXT NOT NULL,
            at REAL NOT NULL
        );
        CREATE TABLE IF NOT EXISTS budget_overrides (
            agent TEXT NOT NULL,
            scope TEXT NOT NULL,
            key TEXT NOT NULL,
            limit_value REAL NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (agent, scope, key)
        );
        CREATE TABLE IF NOT EXISTS usage_totals (
            agent TEXT PRIMARY KEY,
            turns INTEGER NOT NULL,
            tokens INTEGER NOT NULL,
            cost_usd REAL NOT NULL
        );
        INSERT OR REPLACE INTO usage_totals (agent, turns, tokens, cost_usd)
            SELECT agent, count(*), sum(input_tokens + output_tokens), sum(cost_usd)
            FROM turns GROUP BY agent;
        CREATE INDEX IF NOT EXISTS turns_recent
            ON turns (at, agent, input_tokens, output_tokens, cost_usd)
        """,
    )
    # a trigger's body has its own `;`: one statement, not for execute_all
    db.execute(
        "CREATE TRIGGER IF NOT EXISTS turns_usage_totals AFTER INSERT ON turns BEGIN"
        " INSERT INTO usage_totals (agent, turns, tokens, cost_usd)"
        " VALUES (NEW.agent, 1, NEW.input_tokens + NEW.output_tokens, NEW.cost_usd)"
        " ON CONFLICT (agent) DO UPDATE SET turns = turns + 1,"
        " tokens = tokens + excluded.tokens, cost_usd = cost_usd + excluded.cost_usd;"
        " END"
    )


MIGRATIONS: list[tuple[int, str, Migration]] = [
    (1, "initial", m001_initial),
    (2, "containers_and_turns", m002_containers_and_turns),
    (3, "reminders", m003_reminders),
    (4, "reminder_delivery_errors", m004_reminder_delivery_errors),
    (5, "approvals_and_deploys", m005_approvals_and_deploys),
    (6, "message_retries", m006_message_retries),
    (7, "federation", m007_federation),
    (8, "operator_controls", m008_operator_controls),
]


def migrate(
    conn: sqlite3.Connection, migrations: list[tuple[int, str, Migration]] | None = None
) -> list[int]:
    """Apply every migration not yet recorded; return the numbers applied."""
    db = sqlite_utils.Database(conn)
    conn.execute(
        "CREATE TABLE IF NOT EXISTS _migrations"
        " (number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    done = {row[0] for row in conn.execute("SELECT number FROM _migrations")}
    applied: list[int] = []
    for number, name, step in migrations if migrations is not None else MIGRATIONS:
        if number in done:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            step(db)
            conn.execute(
                "INSERT OR IGNORE INTO _migrations (number, name, applied_at) VALUES (?, ?, ?)",
                (number, name, time.time()),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        applied.append(number)
    return applied
