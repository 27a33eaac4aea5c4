"""Runs every statement the collector sent to Debian's ClickHouse 18.16 in the integration tests
(their `--clickhouse-sql-log` files) on a current ClickHouse engine, chdb-core, in-process.

    python3 collector/tests/clickhouse_sql_check.py target/tmp/clickhouse-sql/*.sql

Tables are created as the collector created them; inserts become `SELECT <columns> FROM <table>
LIMIT 0` (the log has no rows), which checks the columns they name; every query then runs on
empty tables, which checks its syntax, names and types. Exits 1 listing what failed."""

import re
import sys

from chdb import session

INSERT = re.compile(r"^INSERT INTO (\w+) \(([^)]*)\) FORMAT RowBinary$")


def statements(paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for record in f.read().split("\n;;\n"):
                record = record.strip()
                if not record:
                    continue
                head, _, sql = record.partition("\n")
                yield head.removeprefix("-- database: ").strip(), sql.strip()


def main():
    paths = sys.argv[1:]
    if not paths:
        sys.exit("no SQL logs given: run the collector's ClickHouse tests first")
    s = session.Session()
    failed, ran, seen = [], 0, set()
    for database, sql in statements(paths):
        if not re.fullmatch(r"\w+", database):
            failed.append((database, sql, "not a database name"))
            continue
        insert = INSERT.match(sql)
        if insert:
            sql = f"SELECT {insert.group(2)} FROM {insert.group(1)} LIMIT 0"
        # Statements differ mostly in their ids and times; each shape is run once.
        shape = (database, re.sub(r"'[^']*'|\b\d+\b", "?", sql))
        if shape in seen:
            continue
        seen.add(shape)
        try:
            s.query(f"CREATE DATABASE IF NOT EXISTS {database}")
            s.query(f"USE {database}")
            s.query(sql)
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
