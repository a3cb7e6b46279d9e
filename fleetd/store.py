"""The SQLite adapter: agents, their state transitions and events are rows.

One connection, used from the daemon's event loop only. WAL mode: a SIGKILL of
the daemon loses no committed row. Each state change, its transition row and
its event are written in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlite_utils
from sqlite_utils.migrations import Migrations

from fleetd.bounds import MAX_MESSAGE_CHARS, MAX_TYPE_CHARS, bounded_data, clip
from fleetd.errors import InvalidRequest, NotFound
from fleetd.models import LIVE_STATES, State, iso, utcnow
from fleetd.wal import WAL_BACKSTOP_PAGES, Checkpointer

migrations = Migrations("fleetd")
# A container's end: into exited, or straight into restarting when its restart policy brings it back (an agent
# stopped while waiting to restart does not end a second time).
_EXIT = "to_state IN ('exited', 'restarting') AND COALESCE(from_state, '') != 'restarting'"
_PROBE = "COALESCE(json_extract(data, '$.probe'), 'unknown')"  # which probe failed, as a counter's key
# The deployment an agent belongs to (fleetd.fleet.DEPLOYMENT_LABEL): a query must spell it so to use its index.
DEPLOYMENT_OF = "json_extract(spec, '$.labels.\"fleetd.deployment\"')"


@migrations()
def m001_initial(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE agents (
            id TEXT PRIMARY KEY, name TEXT NOT NULL, image TEXT NOT NULL,
            role TEXT NOT NULL, state TEXT NOT NULL, reason TEXT,
            container_id TEXT, created_at TEXT NOT NULL, started_at TEXT,
            finished_at TEXT, deadline TEXT, kill_at TEXT, exit_code INTEGER,
            oom_killed INTEGER NOT NULL DEFAULT 0, last_heartbeat TEXT,
            spec TEXT NOT NULL)"""
    )
    db.execute("CREATE INDEX agents_state ON agents(state)")
    db.execute("CREATE INDEX agents_name ON agents(name)")
    db.execute(
        """CREATE TABLE transitions (
            id INTEGER PRIMARY KEY, agent_id TEXT NOT NULL, at TEXT NOT NULL,
            from_state TEXT, to_state TEXT NOT NULL, reason TEXT)"""
    )
    db.execute("CREATE INDEX transitions_agent ON transitions(agent_id)")
    db.execute(
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY, at TEXT NOT NULL, agent_id TEXT,
            type TEXT NOT NULL, message TEXT NOT NULL, data TEXT)"""
    )
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")


@migrations()
def m002_credentials_and_roles(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE credentials (
            name TEXT PRIMARY KEY, upstream TEXT NOT NULL, nonce BLOB NOT NULL,
            sealed BLOB NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"""
    )
    db.execute(
        """CREATE TABLE roles (
            name TEXT PRIMARY KEY, creds TEXT NOT NULL DEFAULT '[]',
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"""
    )


@migrations()
def m003_budgets_and_prices(db: sqlite_utils.Database) -> None:
    # Budget caps per role (NULL: inherit from the config file's role, then [budget], then built-in).
    for column in ("daily_usd TEXT", "monthly_usd TEXT", "max_llm_calls INTEGER", "allow_unpriced INTEGER"):
        db.execute(f"ALTER TABLE roles ADD COLUMN {column}")
    db.execute(
        """CREATE TABLE prices (
            model TEXT PRIMARY KEY, data TEXT NOT NULL, updated_at TEXT NOT NULL)"""
    )


@migrations()
def m004_restarts_heartbeats_probes(db: sqlite_utils.Database) -> None:
    for column in ("restarts INTEGER NOT NULL DEFAULT 0", "restart_at TEXT", "progress TEXT", "ready INTEGER"):
        db.execute(f"ALTER TABLE agents ADD COLUMN {column}")


@migrations()
def m005_credential_provider(db: sqlite_utils.Database) -> None:
    # The provider kind (fleetd.zone2.kinds); NULL for credentials set before kinds existed: inferred from the upstream.
    db.execute("ALTER TABLE credentials ADD COLUMN provider TEXT")


@migrations()
def m006_retention(db: sqlite_utils.Database) -> None:
    # Commands read live agents and recent events: indexes so that their cost does not grow with history.
    db.execute("CREATE INDEX events_agent ON events(agent_id)")
    db.execute("CREATE INDEX events_at ON events(at)")
    db.execute("CREATE INDEX events_type ON events(type)")
    db.execute("CREATE INDEX agents_finished ON agents(state, finished_at)")
    # What the rows removed by retention had counted (spawns, exits, restarts, probe failures): Prometheus
    # counters must not go down when old records go.
    db.execute("CREATE TABLE retired_counts (name TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL, "
               "PRIMARY KEY (name, key))")


@migrations()
def m007_tasks(db: sqlite_utils.Database) -> None:
    # The durable queue of deployments (fleetd.task_queue): seq orders it (FIFO), attempts fences a lease,
    # version is bound at the first lease, money is in nano-USD like the rest of fleetd.
    db.execute(
        """CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, deployment TEXT NOT NULL, version TEXT,
            state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, max_attempts INTEGER NOT NULL,
            agent_id TEXT, input TEXT NOT NULL, output TEXT, error TEXT, code TEXT,
            cost_nusd INTEGER NOT NULL DEFAULT 0, max_nusd INTEGER, llm_calls INTEGER NOT NULL DEFAULT 0,
            idempotency_key TEXT, created_at TEXT NOT NULL, deadline TEXT NOT NULL, retry_at TEXT NOT NULL,
            started_at TEXT, finished_at TEXT)"""
    )
    # The next task of a deployment in order, and its queue depth; the task an agent holds; what retention and
    # expiry look for; an idempotency key once per deployment.
    db.execute("CREATE INDEX tasks_next ON tasks(deployment, state, seq)")
    db.execute("CREATE INDEX tasks_agent ON tasks(agent_id, state)")
    db.execute("CREATE INDEX tasks_finished ON tasks(state, finished_at)")
    db.execute("CREATE INDEX tasks_deadline ON tasks(state, deadline)")
    db.execute("CREATE UNIQUE INDEX tasks_key ON tasks(deployment, idempotency_key) WHERE idempotency_key IS NOT NULL")


@migrations()
def m008_lifetime_counts(db: sqlite_utils.Database) -> None:
    # Prometheus counters (spawns, exits by reason, restarts, probe failures) kept as they happen, by triggers:
    # a scrape reads a few rows instead of counting every record in the retention window (a week of records and a
    # month of events), and retention has nothing to carry over. Seeded with what was counted until now.
    db.execute("CREATE TABLE lifetime_counts (name TEXT NOT NULL, key TEXT NOT NULL, value INTEGER NOT NULL, "
               "PRIMARY KEY (name, key))")
    for counted in (
        "SELECT name, key, value FROM retired_counts WHERE name IN ('spawns', 'exits', 'restarts', 'probe_failures')",
        "SELECT 'spawns', '', COUNT(*) FROM agents",
        f"SELECT 'exits', COALESCE(reason, 'unknown'), COUNT(*) FROM transitions WHERE {_EXIT} GROUP BY 2",
        f"SELECT 'restarts', '', COUNT(*) FROM events WHERE type = '{RESTARTED_EVENT}'",
        f"SELECT 'probe_failures', {_PROBE}, COUNT(*) FROM events WHERE type = '{PROBE_FAILED_EVENT}' GROUP BY 2",
    ):
        db.execute(f"INSERT INTO lifetime_counts SELECT * FROM ({counted}) WHERE 1 "
                   "ON CONFLICT (name, key) DO UPDATE SET value = value + excluded.value")
    db.execute("DELETE FROM retired_counts WHERE name IN ('spawns', 'exits', 'restarts', 'probe_failures')")
    _count_trigger(db, "count_spawns", "INSERT ON agents", "1", "'spawns'", "''")
    _count_trigger(db, "count_exits", "INSERT ON transitions", _EXIT.replace("to_state", "NEW.to_state").replace(
        "from_state", "NEW.from_state"), "'exits'", "COALESCE(NEW.reason, 'unknown')")
    _count_trigger(db, "count_restarts", "INSERT ON events", f"NEW.type = '{RESTARTED_EVENT}'", "'restarts'", "''")
    _count_trigger(db, "count_probe_failures", "INSERT ON events", f"NEW.type = '{PROBE_FAILED_EVENT}'",
                   "'probe_failures'", _PROBE.replace("data", "NEW.data"))


@migrations()
def m009_state_counts(db: sqlite_utils.Database) -> None:
    # How many agents are in each state (`fleetd status`, every scrape), kept by triggers: counting the agents
    # table walked every removed agent the records window keeps (5 ms per 100,000, a week of them).
    db.execute("CREATE TABLE state_counts (state TEXT PRIMARY KEY, value INTEGER NOT NULL)")
    db.execute("INSERT INTO state_counts SELECT state, COUNT(*) FROM agents GROUP BY state")
    add = ("INSERT OR IGNORE INTO state_counts VALUES (NEW.state, 0); "
           "UPDATE state_counts SET value = value + 1 WHERE state = NEW.state;")
    take = "UPDATE state_counts SET value = value - 1 WHERE state = OLD.state;"
    db.execute(f"CREATE TRIGGER count_state_insert AFTER INSERT ON agents BEGIN {add} END")
    db.execute(f"CREATE TRIGGER count_state_update AFTER UPDATE OF state ON agents WHEN OLD.state != NEW.state "
               f"BEGIN {take} {add} END")
    db.execute(f"CREATE TRIGGER count_state_delete AFTER DELETE ON agents BEGIN {take} END")


def _count_trigger(db: sqlite_utils.Database, name: str, event: str, when: str, counter: str, key: str) -> None:
    """A trigger adding one to lifetime_counts (counter, key) for each row of ``event`` that matches ``when``."""
    db.execute(f"CREATE TRIGGER {name} AFTER {event} WHEN {when} BEGIN "
               f"INSERT OR IGNORE INTO lifetime_counts VALUES ({counter}, {key}, 0); "
               f"UPDATE lifetime_counts SET value = value + 1 WHERE name = {counter} AND key = {key}; END")


@migrations()
def m010_deployments(db: sqlite_utils.Database) -> None:
    # Deployments (fleetd.deployments): the scaling columns are ScalingPolicy's fields by name, the task_ columns
    # the defaults of the tasks submitted to it (USD as an exact decimal string); state is active | removing, and
    # drain says whether its removal waits for the queue to empty.
    db.execute(
        """CREATE TABLE deployments (
            name TEXT PRIMARY KEY, state TEXT NOT NULL, current_version INTEGER NOT NULL,
            min INTEGER NOT NULL, max INTEGER NOT NULL, warm INTEGER NOT NULL, tasks_per_agent INTEGER NOT NULL,
            scale_down_window REAL NOT NULL, task_ttl INTEGER NOT NULL, task_attempts INTEGER NOT NULL,
            task_max_usd TEXT, drain INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"""
    )
    # Each version's agent spec (AgentSpec JSON), numbered from 1 per deployment; state is active | draining |
    # retired, so that a rollout can keep two versions active and a replaced one drains its agents.
    db.execute(
        """CREATE TABLE deployment_versions (
            deployment TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
            created_at TEXT NOT NULL, PRIMARY KEY (deployment, version))"""
    )


@migrations()
def m011_usage_peaks(db: sqlite_utils.Database) -> None:
    # What each agent used, sampled from its cgroup (fleetd.peaks): the most memory it held, the CPU time of its last
    # run, the highest CPU rate between two samples in cores. Right-sizing reads them over the finished agents of a
    # role or a deployment: indexed, so that it reads those rows and not the whole records window.
    for column in ("peak_memory_bytes INTEGER", "cpu_ns INTEGER", "peak_cpu_cores REAL"):
        db.execute(f"ALTER TABLE agents ADD COLUMN {column}")
    db.execute("CREATE INDEX agents_role ON agents(role, state)")
    db.execute(f"CREATE INDEX agents_deployment ON agents({DEPLOYMENT_OF}, state)")


@migrations()
def m012_task_counts(db: sqlite_utils.Database) -> None:
    # How many tasks each deployment has in each state, kept by triggers as state_counts is for agents: a submit
    # checks the deployment's unfinished tasks against its bound, the autoscaler reads its queue depth every second
    # and `deploy ls` every count; counting the tasks table walked up to 10,000 queued rows for each (0.4 ms a
    # submit at 4,000) and every finished task that retention keeps. A count that falls to 0 goes with its row.
    db.execute("CREATE TABLE task_counts (deployment TEXT NOT NULL, state TEXT NOT NULL, value INTEGER NOT NULL, "
               "PRIMARY KEY (deployment, state))")
    db.execute("INSERT INTO task_counts SELECT deployment, state, COUNT(*) FROM tasks GROUP BY 1, 2")
    add = ("INSERT INTO task_counts VALUES (NEW.deployment, NEW.state, 1) "
           "ON CONFLICT (deployment, state) DO UPDATE SET value = value + 1;")
    take = ("UPDATE task_counts SET value = value - 1 WHERE deployment = OLD.deployment AND state = OLD.state; "
            "DELETE FROM task_counts WHERE deployment = OLD.deployment AND state = OLD.state AND value <= 0;")
    db.execute(f"CREATE TRIGGER count_task_insert AFTER INSERT ON tasks BEGIN {add} END")
    db.execute("CREATE TRIGGER count_task_update AFTER UPDATE OF state, deployment ON tasks "
               f"WHEN OLD.state != NEW.state OR OLD.deployment != NEW.deployment BEGIN {take} {add} END")
    db.execute(f"CREATE TRIGGER count_task_delete AFTER DELETE ON tasks BEGIN {take} END")



@migrations()
def m013_rollouts(db: sqlite_utils.Database) -> None:
    # Canary and blue-green rollouts (fleetd.rollouts). A task's route is the version its submit sent it to, before
    # any lease binds it (version): NULL is the deployment's current version. One rollout per deployment at most;
    # its row goes when it ends, and the versions keep the outcome (promoted, rolled_back, replaced).
    db.execute("ALTER TABLE tasks ADD COLUMN route TEXT")
    db.execute("ALTER TABLE deployment_versions ADD COLUMN outcome TEXT")
    # A canary version's spend cap (--canary-max-usd, nano-USD): zone 2 caps its agents' calls together (a spend
    # pool) while it is a canary and, rolled back, while its agents drain.
    db.execute("ALTER TABLE deployment_versions ADD COLUMN spend_cap_nusd INTEGER")
    db.execute(
        """CREATE TABLE rollouts (
            deployment TEXT PRIMARY KEY, strategy TEXT NOT NULL, version INTEGER NOT NULL,
            previous INTEGER NOT NULL, phase TEXT NOT NULL, policy TEXT, seed TEXT NOT NULL,
            routed INTEGER NOT NULL DEFAULT 0, target INTEGER, started_at TEXT NOT NULL)"""
    )
    # A canary is judged on its own tasks and the current version's, each read newest first since the rollout began
    # (a 1 % canary's are one in a hundred of the deployment's, too few among its newest rows to be judged), and
    # deploy inspect reads each version's the same way. One index for both: every lease and completion updates it
    # (a second one, on (deployment, finished_at), cost the queue 15 % of its lease-and-complete rate).
    # Partial: a task enters it when it finishes, so a submit and a lease write no entry of it.
    db.execute("CREATE INDEX tasks_version_finished ON tasks(deployment, version, finished_at) "
               "WHERE finished_at IS NOT NULL")


@migrations()
def m014_role_egress(db: sqlite_utils.Database) -> None:
    # A role's egress (fleetd.egress), as `role set --egress` gave it: its patterns as JSON, presets expanded; NULL
    # is "not set here" (the config's [roles.X], else none). A role with no egress is [] (`--egress none`).
    db.execute("ALTER TABLE roles ADD COLUMN egress TEXT")
    db.execute("ALTER TABLE roles ADD COLUMN egress_max_bytes INTEGER")

RESTARTED_EVENT = "restarted"
PROBE_FAILED_EVENT = "probe_failed"
ROLE_BUDGET_FIELDS = ("daily_usd", "monthly_usd", "max_llm_calls", "allow_unpriced")
ROLE_FIELDS = (*ROLE_BUDGET_FIELDS, "egress", "egress_max_bytes")
AGENT_COLUMNS = (
    "name", "image", "role", "state", "reason", "container_id", "created_at",
    "started_at", "finished_at", "deadline", "kill_at", "exit_code", "oom_killed",
    "last_heartbeat", "spec", "restarts", "restart_at", "progress", "ready",
    "peak_memory_bytes", "cpu_ns", "peak_cpu_cores",
)


class Store:
    """Durable state of one fleetd instance."""

    def __init__(self, path: Path) -> None:
        self.path = path
        conn = sqlite3.connect(str(path), isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self.db.enable_wal()
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        # Checkpoints in a thread of their own (fleetd.wal), not inside the commits of the event loop's writes.
        self.db.execute(f"PRAGMA wal_autocheckpoint={WAL_BACKSTOP_PAGES}")
        migrations.apply(self.db)
        self.conn = conn
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.checkpointer = None if str(path) == ":memory:" else Checkpointer(Path(path))

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()
            self.checkpointer = None
        self.conn.close()

    def rows(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        """A SELECT's rows as dicts. Not sqlite-utils' ``query()``: it wraps every statement in a SAVEPOINT (three
        statements, and outside a transaction one of its own), which was half the queue's time per task."""
        cursor = self.conn.execute(sql, params)
        keys = [column[0] for column in cursor.description]
        return [dict(zip(keys, row, strict=True)) for row in cursor]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- meta ---------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def claim_instance(self, instance: str) -> None:
        """Bind this state dir to one instance name; refuse another."""
        owner = self.meta("instance")
        if owner is None:
            self.set_meta("instance", instance)
        elif owner != instance:
            raise InvalidRequest(
                f"state dir {self.path.parent} belongs to instance {owner!r}, not {instance!r}"
            )

    # -- agents -------------------------------------------------------------
    def insert_agent(self, agent_id: str, **fields: Any) -> dict[str, Any]:
        fields = {"id": agent_id, **fields}
        names = ", ".join(fields)
        marks = ", ".join("?" for _ in fields)
        with self.transaction():
            self.conn.execute(f"INSERT INTO agents ({names}) VALUES ({marks})", list(fields.values()))
            self._transition_row(agent_id, None, fields["state"], fields.get("reason"))
        self.add_event("created", f"agent {fields['name']} created", agent_id, {"image": fields["image"]})
        return self.get(agent_id)  # type: ignore[return-value]

    def get(self, agent_id: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM agents WHERE id = ?", [agent_id])
        return rows[0] if rows else None

    def resolve(self, ref: str) -> dict[str, Any]:
        """Find an agent by id, by name (a live one first), or by unique id prefix."""
        row = self.get(ref)
        if row:
            return row
        rows = self.rows(
            f"SELECT * FROM agents WHERE name = ? ORDER BY state NOT IN ({', '.join('?' for _ in LIVE_STATES)}),"
            " created_at DESC",
            [ref, *LIVE_STATES],
        )
        if rows:
            return rows[0]
        if len(ref) >= 3:
            like = ref.replace("%", "").replace("_", "") + "%"
            rows = self.rows("SELECT * FROM agents WHERE id LIKE ? LIMIT 2", [like])
            if len(rows) == 1:
                return rows[0]
            if len(rows) > 1:
                raise InvalidRequest(f"{ref!r} matches more than one agent: use more of the id")
        raise NotFound(f"no such agent: {ref}")

    def agents(self, states: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
        if states is None:
            return self.rows("SELECT * FROM agents ORDER BY created_at")
        marks = ", ".join("?" for _ in states)
        return self.rows(f"SELECT * FROM agents WHERE state IN ({marks}) ORDER BY created_at", list(states))

    def filtered_agents(self, filters: dict[str, list[str]], all_: bool) -> list[dict[str, Any]]:
        """Agents matching ``filters`` (``fleetd.filters``: values of one key ORed, keys ANDed), in SQL.

        Live ones only unless ``all_`` or a ``state`` filter (as ``docker ps --filter status=exited``).
        """
        where: list[str] = []
        params: list[Any] = []

        def any_of(clauses: list[tuple[str, list[Any]]]) -> None:
            where.append("(" + " OR ".join(c for c, _ in clauses) + ")")
            for _, p in clauses:
                params.extend(p)

        if not all_ and "state" not in filters:
            filters = {**filters, "state": list(LIVE_STATES)}
        for key, values in filters.items():
            if key == "state":
                any_of([("state = ?", [v]) for v in values])
            elif key == "role":
                any_of([("role = ?", [v]) for v in values])
            elif key == "name":  # part of the name, as docker's name filter
                any_of([("instr(name, ?) > 0", [v]) for v in values])
            elif key == "id":  # a prefix of the id
                any_of([("substr(id, 1, length(?)) = ?", [v, v]) for v in values])
            elif key == "label":
                clauses = []
                for value in values:
                    label, eq, wanted = value.partition("=")
                    test = "key = ?" + (" AND value = ?" if eq else "")
                    clauses.append((f"EXISTS (SELECT 1 FROM json_each(agents.spec, '$.labels') WHERE {test})",
                                    [label, wanted] if eq else [label]))
                any_of(clauses)
            else:
                raise ValueError(f"unknown filter key {key!r}")
        sql = "SELECT * FROM agents" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY created_at, rowid"
        return self.rows(sql, params)

    def state_counts(self) -> dict[str, int]:
        """How many agents are in each state (``state_counts``, kept by triggers: a few rows, whatever the history)."""
        return {state: count for state, count in self.conn.execute("SELECT state, value FROM state_counts")
                if count}

    def counts(self) -> dict[str, Any]:
        """Lifetime counters (``lifetime_counts``, kept by triggers): retention does not lower them."""
        counted: dict[str, dict[str, int]] = {}
        for name, key, value in self.conn.execute("SELECT name, key, value FROM lifetime_counts"):
            counted.setdefault(name, {})[key] = value
        return {"spawns": counted.get("spawns", {}).get("", 0), "exits_by_reason": counted.get("exits", {}),
                "probe_failures": counted.get("probe_failures", {}),
                "restarts": counted.get("restarts", {}).get("", 0)}

    def purge(self, records_before: datetime, events_before: datetime) -> dict[str, int]:
        """Retention: removed agents that ended before ``records_before`` go with their transitions and events;
        any event before ``events_before`` goes. The lifetime counters keep what they counted."""
        gone = "(agent_id IN (SELECT id FROM doomed) OR at < :events)"
        with self.transaction():
            self.conn.execute("CREATE TEMP TABLE doomed AS SELECT id FROM agents WHERE state = 'removed' "
                              "AND COALESCE(finished_at, created_at) < :records", {"records": iso(records_before)})
            try:
                events = self.conn.execute(f"DELETE FROM events WHERE {gone}", {"events": iso(events_before)}).rowcount
                transitions = self.conn.execute(
                    "DELETE FROM transitions WHERE agent_id IN (SELECT id FROM doomed)").rowcount
                agents = self.conn.execute("DELETE FROM agents WHERE id IN (SELECT id FROM doomed)").rowcount
            finally:
                self.conn.execute("DROP TABLE temp.doomed")
        return {"agents": agents, "transitions": transitions, "events": events}

    def discard_agent(self, agent_id: str) -> None:
        """A spawn refused after its record was made (bad input the engine found: an unknown image): the agent never
        existed, so nothing of it stays, not even in the spawn count."""
        with self.transaction():
            for table, column in (("events", "agent_id"), ("transitions", "agent_id"), ("agents", "id")):
                self.conn.execute(f"DELETE FROM {table} WHERE {column} = ?", (agent_id,))
            self.conn.execute("UPDATE lifetime_counts SET value = value - 1 WHERE name = 'spawns' AND key = ''")

    def name_owner(self, name: str) -> tuple[str, str] | None:
        """The agent (id, state) holding a name: any record not removed (Docker's rule for container names)."""
        marks = ", ".join("?" for _ in LIVE_STATES)
        row = self.conn.execute(
            f"SELECT id, state FROM agents WHERE name = ? AND state != ?"
            f" ORDER BY state IN ({marks}) DESC, created_at DESC LIMIT 1",
            [name, State.REMOVED.value, *LIVE_STATES],
        ).fetchone()
        return (row[0], row[1]) if row else None

    def update(self, agent_id: str, **fields: Any) -> dict[str, Any]:
        """Change fields that are not the state (deadline, heartbeat …)."""
        self._update(agent_id, fields)
        return self.get(agent_id)  # type: ignore[return-value]

    def transition(self, agent_id: str, state: State, reason: str | None = None, **fields: Any) -> dict[str, Any]:
        """Move an agent to a new state, recording the transition and an event."""
        before = self.get(agent_id)
        if before is None:
            raise NotFound(f"no such agent: {agent_id}")
        with self.transaction():
            self._update(agent_id, {"state": state.value, "reason": reason, **fields})
            self._transition_row(agent_id, before["state"], state.value, reason)
        message = f"{before['state']} -> {state.value}" + (f" ({reason})" if reason else "")
        data = {"from": before["state"], "to": state.value, "reason": reason}
        if "exit_code" in fields:
            data["exit_code"] = fields["exit_code"]
        self.add_event("state", message, agent_id, data)
        return self.get(agent_id)  # type: ignore[return-value]

    def _update(self, agent_id: str, fields: dict[str, Any]) -> None:
        bad = set(fields) - set(AGENT_COLUMNS)
        if bad:
            raise ValueError(f"not agent columns: {bad}")
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.conn.execute(f"UPDATE agents SET {sets} WHERE id = ?", [*fields.values(), agent_id])

    def _transition_row(self, agent_id: str, before: str | None, after: str, reason: str | None) -> None:
        self.conn.execute(
            "INSERT INTO transitions (agent_id, at, from_state, to_state, reason) VALUES (?, ?, ?, ?, ?)",
            (agent_id, iso(utcnow()), before, after, reason),
        )

    def transitions(self, agent_id: str) -> list[dict[str, Any]]:
        return self.rows(
            "SELECT at, from_state, to_state, reason FROM transitions WHERE agent_id = ? ORDER BY id", [agent_id]
        )

    # -- roles --------------------------------------------------------------
    def set_role(self, name: str, creds: list[str] | None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create or update a role; ``creds=None`` keeps the current list; of ``settings`` (ROLE_FIELDS: budget caps,
        egress patterns as a list, egress_max_bytes) those not given are kept, those given as None unset."""
        now = iso(utcnow())
        current = self.role(name) or {}
        value = json.dumps(sorted(set(creds)) if creds is not None else current.get("creds", []))
        fields = {f: current.get(f) for f in ROLE_FIELDS}
        fields.update(settings or {})
        fields["egress"] = None if fields["egress"] is None else json.dumps(fields["egress"])
        self.conn.execute(
            """INSERT INTO roles (name, creds, created_at, updated_at, daily_usd, monthly_usd, max_llm_calls,
                                  allow_unpriced, egress, egress_max_bytes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(name) DO UPDATE SET creds = excluded.creds, updated_at = excluded.updated_at,
                 daily_usd = excluded.daily_usd, monthly_usd = excluded.monthly_usd,
                 max_llm_calls = excluded.max_llm_calls, allow_unpriced = excluded.allow_unpriced,
                 egress = excluded.egress, egress_max_bytes = excluded.egress_max_bytes""",
            (name, value, now, now, *(fields[f] for f in ROLE_FIELDS)),
        )
        return self.role(name)  # type: ignore[return-value]

    @staticmethod
    def _role_row(row: dict[str, Any]) -> dict[str, Any]:
        allow, egress = row.get("allow_unpriced"), row.get("egress")
        return {**row, "creds": json.loads(row["creds"]), "allow_unpriced": None if allow is None else bool(allow),
                "egress": None if egress is None else json.loads(egress)}

    def role(self, name: str) -> dict[str, Any] | None:
        rows = self.rows("SELECT * FROM roles WHERE name = ?", [name])
        return self._role_row(rows[0]) if rows else None

    def roles(self) -> list[dict[str, Any]]:
        return [self._role_row(r) for r in self.rows("SELECT * FROM roles ORDER BY name")]

    def role_creds(self, name: str) -> list[str]:
        role = self.role(name)
        return list(role["creds"]) if role else []

    # -- prices -------------------------------------------------------------
    def set_price(self, model: str, data: dict[str, Any]) -> None:
        self.conn.execute(
            """INSERT INTO prices (model, data, updated_at) VALUES (?, ?, ?)
               ON CONFLICT(model) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at""",
            (model, json.dumps(data), iso(utcnow())),
        )

    def remove_price(self, model: str) -> bool:
        return self.conn.execute("DELETE FROM prices WHERE model = ?", (model,)).rowcount > 0

    def prices(self) -> list[dict[str, Any]]:
        return [{**json.loads(r["data"]), "updated_at": r["updated_at"]}
                for r in self.rows("SELECT * FROM prices ORDER BY model")]

    # -- events -------------------------------------------------------------
    def add_event(
        self, type_: str, message: str, agent_id: str | None = None, data: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record an event; its type, message and data are cut to their bounds (fleetd.bounds) first."""
        at = iso(utcnow())
        # Zone 2 relays refusals that quote what an agent sent: agent-chosen text, bounded here where it is kept.
        type_, message, data = clip(type_, MAX_TYPE_CHARS), clip(message, MAX_MESSAGE_CHARS), bounded_data(data or {})
        cursor = self.conn.execute(
            "INSERT INTO events (at, agent_id, type, message, data) VALUES (?, ?, ?, ?, ?)",
            (at, agent_id, type_, message, json.dumps(data)),
        )
        event = {"id": cursor.lastrowid, "time": at, "agent_id": agent_id, "type": type_,
                 "message": message, "data": data}
        if self.on_event is not None:
            self.on_event(event)
        return event

    def events(self, since: int | None = None, limit: int = 1000, agent_id: str | None = None,
               start: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
        """Events after ``since`` or at ``start`` or later (the next ``limit`` of them), or else the newest ``limit``.

        ``start`` and ``until`` (both included) are times as stored (``fleetd.models.iso``), which sort as text.
        """
        sql = "SELECT * FROM events WHERE id > ?"
        params: list[Any] = [since or 0]
        if agent_id:
            sql += " AND agent_id = ?"
            params.append(agent_id)
        if start is not None:
            sql += " AND at >= ?"
            params.append(start)
        if until is not None:
            sql += " AND at <= ?"
            params.append(until)
        forward = since is not None or start is not None
        sql += " ORDER BY id " + ("ASC" if forward else "DESC") + " LIMIT ?"
        params.append(limit)
        rows = self.rows(sql, params)
        if not forward:
            rows.reverse()
        return [
            {"id": r["id"], "time": r["at"], "agent_id": r["agent_id"], "type": r["type"],
             "message": r["message"], "data": json.loads(r["data"] or "{}")}
            for r in rows
        ]
