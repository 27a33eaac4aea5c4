"""Runs every statement the collector sent to Debian's ClickHouse 18.16 in the integration tests
(their `--clickhouse-sql-log` files) on a current ClickHouse engine, chdb-core, in-process.

    python3 collector/tests/clickhouse_sql_check.py target/tmp/clickhouse-sql/*.sql

Tables are created as the collector created them; inserts become `SELECT <columns> FROM <table>
LIMIT 0` (the log has no rows), which checks the columns they name; every query then runs on
empty tables, which checks its syntax, names and types. Exits 1 listing what failed.

A cluster's statements (`--clickhouse-cluster`) run against the same cluster names defined
with one local shard each; their `ON CLUSTER` clauses are dropped, since distributed DDL needs
ZooKeeper, which an in-process engine does not have."""

import os
import re
import sys
import tempfile

from chdb import session

INSERT = re.compile(r"^INSERT INTO (\w+) \(([^)]*)\) FORMAT RowBinary$")
ON_CLUSTER = re.compile(r" ON CLUSTER (\w+)")
DISTRIBUTED = re.compile(r"Distributed\((\w+),")


def open_session(clusters, directory):
    """A chdb session where each of `clusters` is one shard on this (in-process) server."""
    if not clusters:
        return session.Session()
    shards = "".join(
        f"<{name}><shard><replica><host>localhost</host><port>9000</port></replica></shard></{name}>"
        for name in sorted(clusters)
    )
    # With tcp_port 9000 the replica localhost:9000 is this server, queried without a network.
    config = os.path.join(directory, "config.xml")
    with open(config, "w", encoding="utf-8") as f:
        f.write(f"<clickhouse><tcp_port>9000</tcp_port><remote_servers>{shards}</remote_servers></clickhouse>")
    return session.Session(f":memory:?config-file={config}")


def statements(paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for record in f.read().split("\n;;\n"):
                record = record.strip()
                if not record:
                    continue
                head, _, sql = record.partition("\n")
                settings = []
                if sql.startswith("-- settings: "):
                    line, _, sql = sql.partition("\n")
                    settings = [kv.split("=", 1) for kv in line.removeprefix("-- settings: ").split()]
                yield head.removeprefix("-- database: ").strip(), settings, sql.strip()


def main():
    paths = sys.argv[1:]
    if not paths:
        sys.exit("no SQL logs given: run the collector's ClickHouse tests first")
    all_statements = list(statements(paths))
    clusters = {m for _, _, sql in all_statements for m in ON_CLUSTER.findall(sql) + DISTRIBUTED.findall(sql)}
    directory = tempfile.mkdtemp(prefix="ember-sql-check-")
    s = open_session(clusters, directory)
    failed, ran, seen = [], 0, set()
    for database, settings, sql in all_statements:
        if not re.fullmatch(r"\w+", database):
            failed.append((database, sql, "not a database name"))
            continue
        sql = ON_CLUSTER.sub("", sql)
        insert = INSERT.match(sql)
        if insert:
            sql = f"SELECT {insert.group(2)} FROM {insert.group(1)} LIMIT 0"
        # Statements differ mostly in their ids and times; each shape is run once.
        shape = (database, str(settings), re.sub(r"'[^']*'|\b\d+\b", "?", sql))
        if shape in seen:
            continue
        seen.add(shape)
        try:
            s.query(f"CREATE DATABASE IF NOT EXISTS {database}")
            s.query(f"USE {database}")
            # The collector sends these as URL parameters; here they hold for the statement.
            for name, value in settings:
                s.query(f"SET {name} = '{value}'")
            s.query(sql)
            for name, _ in settings:
                s.query(f"SET {name} = DEFAULT")
            ran += 1
        except Exception as e:  # noqa: BLE001 - chdb raises its own error types
            failed.append((database, sql, str(e).splitlines()[0] if str(e) else repr(e)))
    version = s.query("SELECT version()", "TabSeparated").bytes().decode().strip()
    for database, sql, error in failed:
        print(f"FAILED on ClickHouse {version} ({database}): {error}\n  {sql[:400]}", file=sys.stderr)
    print(f"clickhouse sql: {ran} statement shapes ran on ClickHouse {version}, {len(failed)} failed")
    sys.exit(1 if failed or ran == 0 else 0)


if __name__ == "__main__":
    main()
