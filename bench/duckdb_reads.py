"""DuckDB side of receipt-bench's read comparison.

Reads a JSON job on stdin: {"dir", "max_blocks_per_file", "readers": [1, 8], "budget_s",
"max_iters", "queries": [{"name", "kind": "logs"|"receipt", "from", "to", "addresses",
"topic0", "hash"}]} (byte values as hex strings) and prints one JSON list of latency figures.
The SQL is upstream's (receipt-store-spec.md 5.2 and 5.4): read_parquet over an explicit file
list with union_by_name, bound parameters, ORDER BY block_number, tx_index, log_index.
"""
import glob
import json
import os
import sys
import threading
import time

import duckdb


def files(d, prefix, mbf, lo=None, hi=None):
    out = []
    for p in glob.glob(os.path.join(d, prefix + "_*.parquet")):
        start = int(os.path.basename(p)[len(prefix) + 1 : -len(".parquet")])
        # Upstream's pre-filter (spec 5.5): skip files that cannot hold the range.
        if hi is not None and start > hi:
            continue
        if lo is not None and start + mbf <= lo:
            continue
        out.append((start, p))
    return [p for _, p in sorted(out)]


def sql_list(paths):
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def build(job, q):
    d, mbf = job["dir"], job["max_blocks_per_file"]
    if q["kind"] == "receipt":
        paths = files(d, "receipts", mbf)
        sql = (
            "SELECT tx_hash, block_number, receipt_bytes FROM read_parquet("
            + sql_list(paths)
            + ", union_by_name = true) WHERE tx_hash = ? ORDER BY block_number LIMIT 1"
        )
        return sql, [bytes.fromhex(q["hash"])]
    paths = files(d, "logs", mbf, q.get("from"), q.get("to"))
    where, params = [], []
    if q.get("from") is not None:
        where.append("block_number >= ?")
        params.append(q["from"])
    if q.get("to") is not None:
        where.append("block_number <= ?")
        params.append(q["to"])
    for col, key in (("address", "addresses"), ("topic0", "topic0")):
        vals = q.get(key) or []
        if vals:
            where.append(col + " IN (" + ", ".join("?" for _ in vals) + ")")
            params.extend(bytes.fromhex(v) for v in vals)
    sql = (
        "SELECT block_number, tx_hash, tx_index, log_index, address, topic0, topic1, topic2, "
        "topic3, data FROM read_parquet("
        + sql_list(paths)
        + ", union_by_name = true)"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY block_number, tx_index, log_index"
    )
    return sql, params


def fetch(cur, sql, params):
    if hasattr(cur, "sql"):
        # A relation hands its result to Arrow without the DB-API copy.
        return cur.sql(sql, params=params).to_arrow_table().num_rows
    res = cur.execute(sql, params)
    # The Arrow result call was renamed across DuckDB releases.
    for name in ("to_arrow_table", "fetch_arrow_table", "arrow"):
        if hasattr(res, name):
            return getattr(res, name)().num_rows
    raise SystemExit("this duckdb has no Arrow result call")


def measure(con, job, q, readers):
    sql, params = build(job, q)
    rows = fetch(con.cursor(), sql, params)  # warm-up: metadata and page cache
    budget, max_iters = job["budget_s"], job["max_iters"]
    lat, bad = [], []
    lock = threading.Lock()

    def run():
        # One connection per reader thread: DuckDB's Python API makes `cursor()` a new
        # connection to the same database (its docs on multiple Python threads say each thread
        # must use one), so readers do not serialize on a shared connection.
        cur = con.cursor()
        mine = []
        deadline = time.perf_counter() + budget
        while len(mine) < max_iters and (len(mine) < 2 or time.perf_counter() < deadline):
            t = time.perf_counter()
            n = fetch(cur, sql, params)
            mine.append((time.perf_counter() - t) * 1e6)
            if n != rows:
                bad.append(n)
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=run) for _ in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if bad:
        raise SystemExit(f"{q['name']}: row count changed between runs: {rows} then {bad[:3]}")
    lat.sort()
    pick = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
    return {
        "engine": "duckdb " + duckdb.__version__,
        "query": q["name"],
        "readers": readers,
        "samples": len(lat),
        "rows": rows,
        "p50_us": pick(0.50),
        "p99_us": pick(0.99),
        "mean_us": sum(lat) / len(lat),
    }


def main():
    job = json.load(sys.stdin)
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute("SET preserve_insertion_order = false")
    try:
        con.execute("SET parquet_metadata_cache = true")
    except duckdb.Error:
        pass
    out = []
    for q in job["queries"]:
        for r in job["readers"]:
            out.append(measure(con, job, q, r))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
