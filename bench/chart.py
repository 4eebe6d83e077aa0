"""Draws bench/results/chart.png from a latest.json: GetUser req/s and
open-loop p99 per server. Runs in the benchmark venv (matplotlib pinned in
bench/peers/python/requirements.txt).

    python chart.py latest.json chart.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")  # no display
import matplotlib.pyplot as plt  # noqa: E402


def main(src, dst):
    with open(src) as f:
        data = json.load(f)
    servers = data["servers"]
    summary = data["summary"]
    rps = [summary[s].get("rps", 0) for s in servers]
    p99 = [summary[s].get("p99_ms", 0) for s in servers]
    colors = ["#1f77b4" if s in ("chart", "chart-no-otlp", "warn") else "#7f7f7f" for s in servers]

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.bar(servers, rps, color=colors)
    left.set_title("GetUser req/s, closed loop (8 conns x 32 streams)")
    left.set_ylabel("req/s (higher is better)")
    right.bar(servers, p99, color=colors)
    right.set_title(f"GetUser p99 at {data['rate']:.0f} req/s (open loop)")
    right.set_ylabel("ms (lower is better)")
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=30)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.suptitle(f"user-service benchmark, {data['meta']['date']}, git {data['meta']['git'][:12]}")
    fig.tight_layout()
    fig.savefig(dst, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
