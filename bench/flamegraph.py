#!/usr/bin/env python3
"""Renders `perf script` output (call-graph samples) as a flame graph PNG.

    perf script -i perf.data | python3 bench/flamegraph.py --title T -o out.png

The root is the whole process; its children are its threads (tokio
workers, the log writer, the span exporter), so work moved off the call
path shows up as its own tower. Frames of this service are orange, the
gRPC/HTTP/2 stack blue, tracing and OpenTelemetry green and purple, the
allocator red, the kernel grey. `--top N` also prints the N frames with the
largest inclusive share, the figures BENCHMARKS.md quotes.
"""

import argparse
import re
import sys
from collections import defaultdict

OFFSET = re.compile(r"\+0x[0-9a-f]+$")


def short(sym):
    """Drops generic arguments and long paths: `<h2::proto::Connection<T,P,B>
    as Future>::poll` becomes `<Connection as Future>::poll`."""
    sym = OFFSET.sub("", sym)
    out, depth, prev = [], 0, ""
    for ch in sym:
        if ch == "<" and prev and (prev.isalnum() or prev in "_>"):
            depth += 1
        elif ch == ">" and depth:
            depth -= 1
        elif not depth:
            out.append(ch)
        prev = ch if not depth else prev
    text = "".join(out)
    # Keep the last two segments of every path.
    return re.sub(r"(?:[A-Za-z_][A-Za-z0-9_]*::)+([A-Za-z_][A-Za-z0-9_{}]*::[A-Za-z_][A-Za-z0-9_{}]*)", r"\1", text)


def stacks(lines):
    """Yields (thread, [frames root first]) per sample of `perf script`."""
    thread, frames = None, []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if thread is not None:
                yield thread, list(reversed(frames))
            thread, frames = None, []
        elif not line.startswith((" ", "\t")):
            thread = line.split()[0]
        else:
            parts = line.strip().split(" ", 1)
            sym = parts[1] if len(parts) > 1 else parts[0]
            sym = re.sub(r"\s*\([^()]*\)$", "", sym)  # the " (dso)" suffix
            if sym == "[unknown]":
                continue
            frames.append(short(sym))
    if thread is not None:
        yield thread, list(reversed(frames))


def colour(name):
    n = name.lower()
    if "[k]" in n or n.startswith(("__x64", "entry_", "do_syscall", "tcp_", "ip_", "__sys", "sys_")) or "kernel" in n:
        return "#b0b0b0"
    if any(s in n for s in ("malloc", "free", "memmove", "memcpy", "mi_", "alloc::")):
        return "#e06666"
    if "opentelemetry" in n or "otlp" in n or "span" in n and "exporter" in n:
        return "#9b7fd1"
    if "tracing" in n or "json" in n or "fmt::" in n:
        return "#7fbf7f"
    if "user_service" in n or any(s in n for s in ("observe", "deadline", "limit::", "authenticate", "instrumented", "usergrpc")):
        return "#f0a030"
    return "#7fa8d8"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--out", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--top", type=int, default=0)
    args = p.parse_args()

    tree = lambda: defaultdict(tree)  # noqa: E731
    counts = defaultdict(int)
    inclusive = defaultdict(int)
    total = 0
    for thread, frames in stacks(sys.stdin):
        path = (thread,) + tuple(frames)
        total += 1
        for i in range(1, len(path) + 1):
            counts[path[:i]] += 1
        for name in set(frames):
            inclusive[name] += 1
    if not total:
        sys.exit("no samples in the input")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    children = defaultdict(list)
    for path in counts:
        children[path[:-1]].append(path)
    depth_max = max(len(p) for p in counts)
    fig, ax = plt.subplots(figsize=(16, max(6, 0.22 * (depth_max + 2))), dpi=110)

    def draw(path, x, depth):
        width = counts[path] / total
        name = path[-1]
        ax.add_patch(Rectangle((x, depth), width, 0.95, facecolor=colour(name), edgecolor="white", linewidth=0.3))
        chars = int(width * 16 * 110 / 6.5)
        if chars >= 4:
            label = name if len(name) <= chars else name[: chars - 1] + "…"
            ax.text(x + 0.002, depth + 0.45, label, fontsize=6.5, va="center", clip_on=True)
        cx = x
        for child in sorted(children[path], key=lambda c: -counts[c]):
            draw(child, cx, depth + 1)
            cx += counts[child] / total

    x = 0.0
    for root in sorted(children[()], key=lambda c: -counts[c]):
        draw(root, x, 0)
        x += counts[root] / total
    ax.set_xlim(0, 1)
    ax.set_ylim(0, depth_max + 1)
    ax.set_yticks([])
    ax.set_xlabel(f"share of the server's CPU samples ({total} samples)")
    ax.set_title(args.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out)

    if args.top:
        for name, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"{100 * n / total:5.1f}%  {name}")


if __name__ == "__main__":
    main()
