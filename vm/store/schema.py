"""The run store's tables, one definition for SQLite, PostgreSQL and MySQL (MariaDB, TiDB).

Values are JSON text. Long text is ``LONGTEXT`` on MySQL (its ``TEXT`` holds 64 KiB); times are
seconds since the epoch as double precision. Steps are unique per (run, position): a step can
never be recorded twice.
"""

from __future__ import annotations

import sqlalchemy as sa

from vm.store.dialects import long_text

__all__ = ["DEFAULT_NAMESPACE", "HEAD", "leases", "metadata", "namespaces", "plan_library", "runs", "steps", "usage"]

#: The newest migration (vm/store/migrations/versions); a store at it needs no upgrade.
HEAD = "0008"

#: The namespace of a store opened without one (and of every run made before namespaces).
DEFAULT_NAMESPACE = "default"


def _long() -> sa.types.TypeEngine:
    return long_text()  # LONGTEXT on MySQL (see vm.store.dialects)


def _seconds() -> sa.types.TypeEngine:
    return sa.Double()


metadata = sa.MetaData()

runs = sa.Table(
    "runs",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", _seconds(), nullable=False),
    sa.Column("updated_at", _seconds(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # queued | running | waiting | completed | failed | interrupted | cancelled
    sa.Column("goal", _long()),
    sa.Column("metadata", _long()),  # JSON
    sa.Column("plan", _long(), nullable=False),  # JSON array (JSON null: a queued goal not planned yet)
    sa.Column("variables", _long(), nullable=False),  # JSON object: the variables the run started with
    sa.Column("parent_id", sa.String(32), sa.ForeignKey("runs.id")),
    sa.Column("fork_seq", sa.BigInteger),  # the seq_no the fork continued from
    sa.Column("final_answer", _long()),  # JSON
    sa.Column("error", _long()),
    sa.Column("owner", sa.String(255)),  # unused since leases; kept for stores made before them
    sa.Column("steps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("limits", _long()),  # JSON: the Limits the run was started with
    sa.Column("planning", _long()),  # JSON: planner, reasoning, model, tokens, attempts
    sa.Column("pending", _long()),  # JSON: the tool call a waiting run waits to have approved
    sa.Column("approve_tools", _long()),  # JSON array: tools whose calls need approval in this run
    sa.Column("judgement", _long()),  # JSON: the judge's grade {score, accept, suggestion, step_notes, model, …}
    sa.Column("score", _seconds()),  # the judge's score 0–10, apart for filtering (None: not judged)
    sa.Column("best_of", sa.String(32)),  # set on the run a plan search (`planvm optimize`) chose: the run it started from
    sa.Column("tools", _long()),  # JSON: where its tools came from: plugins (path, sha256), MCP servers, builtins (0005)
    sa.Column("spent_s", _seconds()),  # execution seconds of failed steps a resume dropped; max_seconds counts them (0007)
    # The namespace the run belongs to: every read and write of a store names one (0008).
    sa.Column("namespace", sa.String(64), nullable=False, server_default=DEFAULT_NAMESPACE),
    sa.Index("runs_parent", "parent_id"),
    sa.Index("runs_status", "status", "created_at"),
    sa.Index("runs_namespace", "namespace", "status", "created_at"),
)

steps = sa.Table(
    "steps",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),  # 0-based position in the run's trace
    sa.Column("seq_no", sa.BigInteger, nullable=False),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("tool", sa.String(255)),
    sa.Column("inputs", _long()),  # JSON
    sa.Column("outputs", _long()),  # JSON object: the variables this step set
    sa.Column("result", _long()),  # JSON: raw tool reply, or a jump's verdict
    sa.Column("llm_calls", _long()),  # JSON array
    sa.Column("next_seq", sa.BigInteger),
    sa.Column("duration_s", _seconds()),
    sa.Column("error", _long()),
    sa.Column("notes", _long()),  # JSON array of text: what happened on the way (0004)
    sa.Column("started_at", _seconds()),  # when the step started, seconds since the epoch (0006)
)

# Who may write a run: one row per run being executed, its owner (a worker id) and when the
# lease runs out. A small table of its own, so renewing a lease never rewrites a run's row.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("owner", sa.String(255), nullable=False),
    sa.Column("expires_at", _seconds(), nullable=False),
    # The approved call its holder started since it took the run ("<seq_no> <tool>"): a tool that
    # needs approval starts only once this is written, and a cancel reads it (0007).
    sa.Column("calling", sa.String(255)),
)

# The plan library: best plans kept for their goals (`planvm runs best`), reused outright for the
# same goal and shown to the planner as examples for similar ones.
plan_library = sa.Table(
    "plan_library",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("created_at", _seconds(), nullable=False),
    sa.Column("run_id", sa.String(32)),  # the run the plan came from (no foreign key: the entry outlives it)
    sa.Column("goal", _long(), nullable=False),
    sa.Column("goal_key", _long(), nullable=False),  # the goal normalised for exact matching
    sa.Column("metadata", _long()),  # JSON
    sa.Column("language", sa.String(64)),  # the response language the plan answers in (None: unspecified)
    sa.Column("label", _long()),  # a label path, "A > B"
    sa.Column("tools", _long(), nullable=False),  # JSON array: the tools the plan calls
    sa.Column("plan", _long(), nullable=False),  # JSON array
    sa.Column("reasoning", _long()),
    sa.Column("final_answer", _long()),  # JSON
    sa.Column("score", _seconds()),
    sa.Column("embedding", sa.LargeBinary()),  # the goal's embedding, float32 little-endian (None: none was available)
    sa.Column("namespace", sa.String(64), nullable=False, server_default=DEFAULT_NAMESPACE),  # (0008)
    sa.Index("plan_library_goal", "goal_key", mysql_length=255),
)

# One row per namespace with a quota: the row a run's admission locks, so that two processes
# admitting runs of one namespace at once count one after the other (0008).
namespaces = sa.Table(
    "namespaces",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
)

# Tokens a namespace's runs used per day (UTC), for its daily token quota (0008).
usage = sa.Table(
    "usage",
    metadata,
    sa.Column("namespace", sa.String(64), primary_key=True),
    sa.Column("day", sa.String(10), primary_key=True),  # YYYY-MM-DD, UTC
    sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0"),
)
