#!/usr/bin/env python3
"""Downloads that seed: one seeder limited to 50 MB/s upload, N nodes (8)
that each start a `get` of the same 200 MB file at the same moment, each
knowing the others' addresses. Reports the time until all N hold the file
against the time one downloader alone takes from the same seeder, measured
in the same invocation, interleaved (target: at most 2x; without re-serving
it would be N x).

Every node is a `peershare serve` (with its local API on a loopback port of
its own); each `get` is handed to its node through that API, as a user's
`get` is when a node runs. Nothing leaves loopback: every node listens on
127.0.0.1 and has discovery off.

Usage (from the workspace root):

    cargo build --release -p peershare-cli && python3 bench/nodes.py [--nodes 8] [--size 200MB] [--rate 50MB] [--runs 3]

Standard library only (Python 3.11+), Linux only. Process handling (exact
per-process rusage of every node) is shared with bench/run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as common  # noqa: E402
from run import BenchError, GIB, MB, log, tail  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO_ROOT / "target" / "release" / "peershare"
DEFAULT_WORK = Path("/tmp/peershare-bench-nodes")
TARGET_RATIO = 2.0
START_TIMEOUT = 30.0
RUN_TIMEOUT = 600.0


def parse_size(text: str) -> int:
    units = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    t = text.strip().lower()
    num = t.rstrip("abcdefghijklmnopqrstuvwxyz")
    return int(float(num) * units[t[len(num):]])


@dataclass
class Serving:
    child: common.Child
    port: int
    err: Path


def start_serve(binary: Path, data: Path, logs: Path, tag: str, extra: list[str]) -> Serving:
    """`serve --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --no-discovery`,
    ready once both its lines (peers' address, API) are out."""
    out_path, err_path = logs / f"serve-{tag}.out", logs / f"serve-{tag}.err"
    argv = [binary, "--data-dir", data, "serve", "--listen", "127.0.0.1:0",
            "--api-listen", "127.0.0.1:0", "--no-discovery", *extra]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        child = common.start(argv, out, err)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        lines = out_path.read_text(errors="replace").splitlines()
        if len(lines) >= 2 and lines[1].startswith("api on "):
            port = int(lines[0].rsplit(":", 1)[1])
            return Serving(child, port, err_path)
        if common.exited(child):
            raise BenchError(f"serve exited ({child.returncode}) before it was ready: {tail(err_path)}")
        if time.monotonic() > deadline:
            raise BenchError(f"serve not ready in {START_TIMEOUT:.0f} s: {tail(err_path)}")
        time.sleep(0.01)


def stop_all(servings: list[Serving]) -> list[tuple[int, float, float]]:
    for s in servings:
        s.child.signal(signal.SIGTERM)
    return [common.reap(s.child, 30.0) for s in servings]


def run_round(binary: Path, work: Path, logs: Path, seed_dir: Path, file_id: str, size: int,
              sha: str, rate: str, n: int, tag: str) -> dict:
    """A fresh seeder and `n` fresh nodes; `n` gets started at once; the time
    until the last one exits 0, and what each took from whom."""
    common.settle()
    seeder = start_serve(binary, seed_dir, logs, f"{tag}-seeder", ["--max-upload-rate", rate])
    nodes: list[Serving] = []
    dirs = []
    try:
        for i in range(n):
            d = work / f"{tag}-node-{i}"
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
            dirs.append(d)
            nodes.append(start_serve(binary, d, logs, f"{tag}-node-{i}", []))
        gets = []
        for i, (d, node) in enumerate(zip(dirs, nodes)):
            argv = [binary, "--data-dir", d, "-q", "get", file_id, "--peer", f"127.0.0.1:{seeder.port}"]
            for j, other in enumerate(nodes):
                if j != i:
                    argv += ["--peer", f"127.0.0.1:{other.port}"]
            argv += ["-o", d / "got.bin", "--json"]
            o, e = logs / f"get-{tag}-{i}.out", logs / f"get-{tag}-{i}.err"
            with open(o, "wb") as fo, open(e, "wb") as fe:
                gets.append((common.spawn(argv, fo, fe), o, e))
        t0 = time.perf_counter()
        for g, _, _ in gets:
            g.go()
        finish = []
        for g, o, e in gets:
            code, _, _ = common.reap(g, RUN_TIMEOUT)
            finish.append(time.perf_counter() - t0)
            if code != 0:
                raise BenchError(f"get exited {code}: {tail(e)}")
        wall = max(finish)
    finally:
        stopped = stop_all(nodes)
        seed_stop = stop_all([seeder])[0]
    from_seeder, from_peers = 0, 0
    for i, d in enumerate(dirs):
        common.verify(d / "got.bin", size, sha, f"node {i}", i == 0)
        summary = json.loads((logs / f"get-{tag}-{i}.out").read_text())
        for p in summary["peers"]:
            if int(p["addr"].rsplit(":", 1)[1]) == seeder.port:
                from_seeder += p["bytes"]
            else:
                from_peers += p["bytes"]
        shutil.rmtree(d, ignore_errors=True)
    return {
        "wall_s": wall,
        "first_done_s": min(finish),
        "from_seeder_mb": from_seeder / MB,
        "from_peers_mb": from_peers / MB,
        "nodes_cpu_s": sum(c for _, c, _ in stopped),
        "seeder_cpu_s": seed_stop[1],
        "node_rss_mib_max": max(r for _, _, r in stopped),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, default=8)
    ap.add_argument("--size", default="200MB")
    ap.add_argument("--rate", default="50MB", help="the seeder's upload limit")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--binary", type=Path, default=DEFAULT_BINARY)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.binary.exists():
        common.die(f"no binary at {args.binary}: cargo build --release -p peershare-cli")
    common.enable_subreaper()
    signal.signal(signal.SIGTERM, common._on_signal)
    size = parse_size(args.size)
    args.work.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    logs.mkdir()
    src, sha = common.ensure_source(args.work, max(1, size // (1 << 20)))
    size = src.stat().st_size
    seed_dir = args.work / "seed"
    file_id, _ = common.share(args.binary, seed_dir, src, size)
    alone, swarm = [], []
    try:
        for r in range(args.runs):
            # Alternating which goes first, so drift hits both alike.
            order = [("alone", 1), ("swarm", args.nodes)]
            if r % 2:
                order.reverse()
            for what, n in order:
                res = run_round(args.binary, args.work, logs, seed_dir, file_id, size, sha, args.rate, n,
                                f"{what}{r}")
                (alone if what == "alone" else swarm).append(res)
                log(f"run {r + 1} {what:5s} ({n} node{'s' if n > 1 else ''}): {res['wall_s']:.2f} s, "
                    f"{res['from_seeder_mb']:.0f} MB from the seeder, {res['from_peers_mb']:.0f} MB from "
                    f"peers, nodes {res['nodes_cpu_s']:.1f} CPU-s, node RSS <= {res['node_rss_mib_max']:.0f} MiB")
    finally:
        common.kill_children()
    med = statistics.median
    a, s = med(r["wall_s"] for r in alone), med(r["wall_s"] for r in swarm)
    result = {
        "nodes": args.nodes,
        "size_mb": size / MB,
        "seeder_rate": args.rate,
        "runs": args.runs,
        "alone_wall_s": a,
        "swarm_wall_s": s,
        "ratio": s / a,
        "target_ratio": TARGET_RATIO,
        "swarm_from_seeder_mb": med(r["from_seeder_mb"] for r in swarm),
        "swarm_from_peers_mb": med(r["from_peers_mb"] for r in swarm),
        "swarm_nodes_cpu_s": med(r["nodes_cpu_s"] for r in swarm),
        "alone_node_cpu_s": med(r["nodes_cpu_s"] for r in alone),
        "node_rss_mib_max": max(r["node_rss_mib_max"] for r in alone + swarm),
    }
    print(f"{args.nodes} nodes, {size / MB:.0f} MB, seeder at {args.rate}/s, medians of {args.runs} runs:")
    print(f"  one downloader alone: {a:.2f} s")
    print(f"  all {args.nodes} at once:      {s:.2f} s  = {s / a:.2f}x alone "
          f"({'PASS' if s / a <= TARGET_RATIO else 'FAIL'}: target <= {TARGET_RATIO}x)")
    print(f"  the swarm took {result['swarm_from_seeder_mb']:.0f} MB from the seeder and "
          f"{result['swarm_from_peers_mb']:.0f} MB from each other")
    print(f"  CPU: {result['swarm_nodes_cpu_s']:.1f} s for the {args.nodes} nodes together "
          f"({result['alone_node_cpu_s']:.1f} s for one alone); peak node RSS {result['node_rss_mib_max']:.0f} MiB")
    if args.json:
        print(json.dumps({"summary": result, "alone": alone, "swarm": swarm}, indent=2))
    return 0 if s / a <= TARGET_RATIO else 3


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        common.kill_children()
        common.die(str(e))
    except KeyboardInterrupt:
        common.kill_children()
        common.die("interrupted", 130)
