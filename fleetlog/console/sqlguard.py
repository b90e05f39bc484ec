"""What the console's SQL box may run: one SELECT over the projections, and nothing else.

The projections refuse writes themselves (one SELECT or EXPLAIN, in a read-only
transaction), but a SELECT can still read any file the server can
(``read_text('/proc/self/environ')``, ``FROM 'secrets.csv'``) or run SQL from a
string (``query(...)``). That is no more than a shell user of ``fleetlog sql``
can do anyway; over HTTP it would be more. So the console parses the statement
(DuckDB's own parser, ``json_serialize_sql``) and refuses every table function
but a few harmless ones, and every table name that could be a file or a URL.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import duckdb

from fleetlog.events.errors import QueryError
from fleetlog.projections.projector import check_read_only

__all__ = ["check_console_sql", "ALLOWED_TABLE_FUNCTIONS"]

#: Table functions that read nothing outside the projections.
ALLOWED_TABLE_FUNCTIONS = frozenset(
    {
        "agent_health",
        "range",
        "generate_series",
        "unnest",
        "json_each",
        "json_tree",
        "duckdb_tables",
        "duckdb_views",
        "duckdb_columns",
        "duckdb_constraints",
        "duckdb_functions",
        "duckdb_types",
        "duckdb_keywords",
        "duckdb_schemas",
    }
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_parser_lock = threading.Lock()
_parser: duckdb.DuckDBPyConnection | None = None


def _parse(sql: str) -> dict[str, Any]:
    global _parser
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect(":memory:", config={"enable_external_access": False})
        row = _parser.execute("SELECT json_serialize_sql(?::VARCHAR)", [sql]).fetchone()
    tree: dict[str, Any] = json.loads(row[0]) if row else {"error": True}
    return tree


def _walk(node: Any) -> list[str]:
    """Every reason to refuse found in a parsed statement."""
    problems: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
            continue
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind == "TABLE_FUNCTION":
            function = item.get("function") or {}
            name = str(function.get("function_name", "")).lower()
            if name not in ALLOWED_TABLE_FUNCTIONS:
                problems.append(f"table function {name}() is not allowed here")
        elif kind == "BASE_TABLE":
            name = str(item.get("table_name", ""))
            if not _NAME.fullmatch(name):
                problems.append(f"{name!r} is not a table of the projections")
        stack.extend(item.values())
    return problems


def check_console_sql(sql: str) -> None:
    """Raise QueryError (one line) unless ``sql`` is one SELECT the console will run."""
    check_read_only(sql)  # one statement, SELECT or EXPLAIN: DuckDB's first line if not
    tree = _parse(sql)
    if tree.get("error"):
        message = str(tree.get("error_message") or "")
        if "Only SELECT" in message or "only SELECT" in message:
            raise QueryError("the console runs SELECT statements only (no EXPLAIN)")
        first = message.strip().splitlines()[0] if message.strip() else "cannot parse the query"
        raise QueryError(first)
    problems = _walk(tree.get("statements", []))
    if problems:
        raise QueryError(f"refused: {problems[0]} (the console reads the projections only)")
