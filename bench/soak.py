#!/usr/bin/env python3
"""Soak: this service at half its measured GetUser capacity for a long run,
with the in-memory store and with PostgreSQL; resident memory and open file
descriptors sampled every few seconds must stay flat.

    make soak                                  # 10 minutes per store
    python3 bench/soak.py --minutes 2 --stores memory

PostgreSQL comes from the libpq variables (PGHOST, PGUSER, ...): `make soak`
runs under pg_virtualenv, which provides a throwaway cluster. The server
runs with the chart's logging (JSON at info), pinned to CPU 0, h2load on
CPU 1. "Flat" means no growth: between the warm-up minute and the load's
last seconds, the median RSS of the last third of the samples is within
±5 % of the first third's (allocators breathe in a sawtooth, so single
samples may swing more; the range is reported), and the open fds move by
at most 2. Prints a Markdown table (for RELIABILITY.md) and writes
bench/results/soak.json; `--judge FILE` re-reads such a file. Exit status
1 when a store is not flat or a call failed.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse

import bench  # the harness beside this file: process, port and h2load helpers

SAMPLE_EVERY_S = 5
WARMUP_S = 60
RSS_TOLERANCE = 0.05
FD_TOLERANCE = 2


def pg_url():
    host, user = os.environ.get("PGHOST"), os.environ.get("PGUSER")
    if not host or not user:
        raise bench.BenchError("the postgres soak needs PGHOST/PGUSER: run it via `make soak` (pg_virtualenv)")
    q = urllib.parse.quote
    password = os.environ.get("PGPASSWORD")
    auth = f"{q(user)}:{q(password)}" if password else q(user)
    port = os.environ.get("PGPORT", "5432")
    return f"postgres://{auth}@{q(host, safe='')}:{port}/{os.environ.get('PGDATABASE', 'postgres')}"


def start(store, minutes):
    """The release server as the chart runs it, on free loopback ports."""
    env = {
        # h2load does not reconnect after a GOAWAY: at the chart's 5-minute
        # connection age the load would stop half way through a 10-minute
        # run. Recycling under load is proven by tests/it/connections.rs;
        # here the connections must outlive the run.
        "USER_SERVICE__GRPC__MAX_CONNECTION_AGE": f"{minutes * 60 + 600}s",
    }
    if store == "postgres":
        env["USER_SERVICE__STORE__URL"] = pg_url()
    # The chart's logging is part of what is soaked (one JSON line per call
    # is formatted and written, to /dev/null).
    server = bench.start_chart_server(env, f"Soak-{store}")
    return server.proc, server, server.user_id


def sample(pid):
    rss_kib = bench.status_kib(pid, "VmRSS")
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss_kib, fds


def soak(store, minutes, work):
    proc, target, user_id = start(store, minutes)
    pid = proc.pid  # taskset execs the server: same pid
    body = os.path.join(work, f"{store}.frame")
    with open(body, "wb") as f:
        f.write(bench.grpc_frame_get_user(user_id))
    try:
        capacity = bench.h2load(target, body, clients=8, streams=32, duration=5)["rps"]
        rate = capacity / 2
        clients = 8
        samples = []
        load_result = {}

        def load():
            load_result.update(bench.h2load(target, body, clients=clients, streams=8,
                                            duration=minutes * 60, rps=rate / clients))

        loader = threading.Thread(target=load, daemon=True)
        started = time.monotonic()
        loader.start()
        while loader.is_alive():
            elapsed = time.monotonic() - started
            rss, fds = sample(pid)
            samples.append({"t_s": round(elapsed, 1), "rss_kib": rss, "fds": fds})
            loader.join(SAMPLE_EVERY_S)
        result = {
            "store": store, "minutes": minutes, "capacity_rps": round(capacity),
            "rate_rps": round(rate), "served": load_result.get("succeeded", 0),
            "failed": load_result.get("failed", 0) + load_result.get("errored", 0),
            "samples": samples,
        }
        return judge(result)
    finally:
        bench.kill_group(proc, bench.signal.SIGTERM)
        proc.wait(timeout=30)


def judge(result):
    """Adds the steady-state figures and the flatness verdict to a result."""
    end = result["minutes"] * 60 - SAMPLE_EVERY_S  # the load winds down after
    steady = [s for s in result["samples"] if WARMUP_S <= s["t_s"] <= end] or result["samples"]
    rss = [s["rss_kib"] for s in steady]
    fds = [s["fds"] for s in steady]
    third = max(1, len(rss) // 3)
    first, last = statistics.median(rss[:third]), statistics.median(rss[-third:])
    result.update({
        "rss_mib": {"min": round(min(rss) / 1024, 1), "first_third": round(first / 1024, 1),
                    "last_third": round(last / 1024, 1), "max": round(max(rss) / 1024, 1)},
        "fds": {"min": min(fds), "max": max(fds)},
        "flat": abs(last - first) <= RSS_TOLERANCE * first and max(fds) - min(fds) <= FD_TOLERANCE,
    })
    return result


def report(results):
    print("| store | minutes | rate (½ capacity) | served | failed | RSS MiB first third → last third (range) | fds | flat |")
    print("|---|---:|---:|---:|---:|---|---|---|")
    for r in results:
        m = r["rss_mib"]
        fds = r["fds"]["min"] if r["fds"]["min"] == r["fds"]["max"] else f"{r['fds']['min']}–{r['fds']['max']}"
        print(f"| {r['store']} | {r['minutes']:g} | {r['rate_rps']}/s (of {r['capacity_rps']}/s) | {r['served']} "
              f"| {r['failed']} | {m['first_third']} → {m['last_third']} ({m['min']}–{m['max']}) | {fds} "
              f"| {'yes' if r['flat'] else 'NO'} |")
    return 0 if all(r["flat"] and r["failed"] == 0 for r in results) else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--stores", default="memory,postgres")
    parser.add_argument("--judge", metavar="FILE", help="re-judge a saved soak.json instead of running")
    args = parser.parse_args()
    if args.judge:
        with open(args.judge) as f:
            return report([judge(r) for r in json.load(f)])
    for what in (["--bin", "user-service"], ["-p", "bench-bare"]):
        bench.run(["cargo", "build", "--locked", "--release", *what], timeout=3600, cwd=bench.ROOT)
    results = []
    with tempfile.TemporaryDirectory() as work:
        for store in args.stores.split(","):
            bench.log(f"soak: {store}, {args.minutes} min at half of capacity")
            results.append(soak(store, args.minutes, work))
    out = os.path.join(bench.ROOT, "bench", "results", "soak.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
    return report(results)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except bench.BenchError as e:
        bench.log(f"FAILED: {e}")
        sys.exit(1)
