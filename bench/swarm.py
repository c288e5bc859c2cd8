#!/usr/bin/env python3
"""Swarm benchmark: one `peershare get` of the same file from 1..N seeders.

Usage (from the workspace root):

    cargo build --release -p peershare-cli && python3 bench/swarm.py [--size 1GiB] [--runs 3]

Scenarios (default `all`): the file from 1, 2, 4 and 8 seeders on loopback
without a rate limit, and from 1 and 4 seeders each limited to 100 Mbit/s
(`serve --max-upload-rate`). Prints throughput, CPU per GiB and peak RSS per
scenario (medians over --runs), each unlimited scenario's throughput against
the 1-seeder one, and the speed-up of N limited seeders over one.

Standard library only (Python 3.11+), Linux only (os.wait4 rusage, /proc).
Process handling (exact per-process rusage, cleanup) is shared with
bench/run.py. See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.dont_write_bytecode = True  # no bench/__pycache__ from importing run.py
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as common  # noqa: E402  (bench/run.py: spawn/reap/kill_children, ...)
from run import BenchError, GIB, MB, MIB, log, tail  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO_ROOT / "target" / "release" / "peershare"

DEFAULT_SIZE = "1GiB"
DEFAULT_LIMIT = "100Mbit"
UNLIMITED_COUNTS = (1, 2, 4, 8)
LIMITED_COUNTS = (1, 4)

# From the issue: swarming may cost at most 10% throughput against one peer
# when the network is not the limit.
TARGET_SWARM_RATIO = 0.90

SERVER_START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
RUN_TIMEOUT = 600.0  # at least; more when a rate limit makes a run longer
BLOCK = 4 * MIB
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# --------------------------------------------------------------------------
# Parsing


_UNITS = {
    "": 1, "b": 1,
    "k": 1e3, "kb": 1e3, "m": 1e6, "mb": 1e6, "g": 1e9, "gb": 1e9,
    "kib": 1024, "mib": 1024 ** 2, "gib": 1024 ** 3,
}
# Like peershare's parse_rate (crates/peershare-proto/src/rate.rs).
_RATE_UNITS = {
    **_UNITS,
    "kbit": 1e3 / 8, "kbps": 1e3 / 8, "mbit": 1e6 / 8, "mbps": 1e6 / 8,
    "gbit": 1e9 / 8, "gbps": 1e9 / 8,
}


def _parse_quantity(text: str, units: dict) -> float:
    t = text.strip()
    t = t[:-2] if t.endswith("/s") else t
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)", t)
    if not m or m.group(2).lower() not in units:
        raise ValueError(text)
    return float(m.group(1)) * units[m.group(2).lower()]


def parse_size(text: str) -> int:
    """`1GiB`, `64MiB`, `500MB`, `1048576` -> bytes."""
    try:
        n = int(_parse_quantity(text, _UNITS))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: e.g. 1GiB, 64MiB, 500MB")
    if n < 1:
        raise argparse.ArgumentTypeError("size must be at least 1 byte")
    return n


def parse_rate(text: str) -> float:
    """peershare's rate syntax -> bytes/s: `100Mbit`, `10MB`, `500KiB`."""
    try:
        bps = _parse_quantity(text, _RATE_UNITS)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid rate {text!r}: e.g. 100Mbit (bits/s), 10MB or 10MiB (bytes/s)")
    if bps < 1:
        raise argparse.ArgumentTypeError(f"rate {text!r} is below 1 byte/s")
    return bps


@dataclass(frozen=True)
class Scenario:
    seeders: int
    rate: str | None = None  # as passed to --max-upload-rate; None: unlimited

    @property
    def rate_bps(self) -> float | None:
        return None if self.rate is None else parse_rate(self.rate)

    @property
    def key(self) -> str:
        return str(self.seeders) if self.rate is None else f"{self.seeders}@{self.rate}"

    @property
    def name(self) -> str:
        who = f"{self.seeders} seeder{'s' if self.seeders != 1 else ''}"
        return f"{who}, {'unlimited' if self.rate is None else self.rate + ' each'}"


def parse_scenarios(spec: str, limit: str) -> list[Scenario]:
    """Comma-separated: `all`, `unlimited` (1,2,4,8), `limited` (1@LIMIT,4@LIMIT),
    `N` (N unlimited seeders), `N@RATE` (N seeders, each at most RATE)."""
    out: list[Scenario] = []
    for tok in (t.strip() for t in spec.split(",")):
        if not tok:
            continue
        if tok == "all":
            new = [Scenario(n) for n in UNLIMITED_COUNTS] + [Scenario(n, limit) for n in LIMITED_COUNTS]
        elif tok == "unlimited":
            new = [Scenario(n) for n in UNLIMITED_COUNTS]
        elif tok == "limited":
            new = [Scenario(n, limit) for n in LIMITED_COUNTS]
        else:
            m = re.fullmatch(r"([0-9]+)(?:@(.+))?", tok)
            if not m or int(m.group(1)) < 1:
                raise argparse.ArgumentTypeError(
                    f"bad scenario {tok!r}: use all, unlimited, limited, N or N@RATE (e.g. 4@100Mbit)")
            rate = m.group(2)
            if rate is not None:
                parse_rate(rate)  # raises ArgumentTypeError
            new = [Scenario(int(m.group(1)), rate)]
        for s in new:
            if s not in out:
                out.append(s)
    if not out:
        raise argparse.ArgumentTypeError("no scenario selected")
    return out


# --------------------------------------------------------------------------
# Measurement helpers


def proc_cpu(pid: int) -> float:
    """CPU seconds (user+sys, all threads, exited ones too) a running process
    has used so far, from /proc/PID/stat: clock-tick resolution (10 ms)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_snapshot(pid: int) -> tuple[float, dict[int, int]]:
    """proc_cpu(pid), and the nanosecond run time of each live thread
    (/proc/PID/task/TID/schedstat; empty when the kernel has no schedstat)."""
    ticks = proc_cpu(pid)
    threads: dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        tids = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                threads[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return ticks, threads


def cpu_delta(before: tuple[float, dict[int, int]], after: tuple[float, dict[int, int]]
              ) -> tuple[float, bool]:
    """CPU seconds between two cpu_snapshot()s of one process, and whether it is
    nanosecond-exact. The per-thread sum is exact unless a thread exited in
    between; it is used when every thread seen before is still there and it
    agrees with the tick-based figure (which counts exited threads) within
    its resolution. Otherwise the tick-based delta (+-10 ms) is returned."""
    (t0, th0), (t1, th1) = before, after
    coarse = t1 - t0
    if not th0 or not th1 or any(tid not in th1 for tid in th0):
        return coarse, False
    fine = sum(ns - th0.get(tid, 0) for tid, ns in th1.items()) / 1e9
    if abs(fine - coarse) > 2.5 / CLK_TCK:
        return coarse, False
    return fine, True


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        vals = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal [guest guest_nice, already in user/nice]
    total = sum(vals[:8])
    idle = vals[3] + vals[4]
    return (total - idle) / CLK_TCK, total / CLK_TCK


def make_source(path: Path, size: int) -> str:
    """Writes `size` random bytes to `path`; returns their SHA-256."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    return h.hexdigest()


def verify(out: Path, size: int, want_sha: str) -> None:
    if not out.exists():
        raise BenchError(f"output {out} does not exist")
    got_size = out.stat().st_size
    if got_size != size:
        raise BenchError(f"output {out} has {got_size} bytes, expected {size}")
    got = common.sha256_file(out)
    if got != want_sha:
        raise BenchError(f"output {out} SHA-256 {got} != source {want_sha}")


def run_tool(argv: list, what: str, logs: Path, name: str, timeout: float = RUN_TIMEOUT
             ) -> tuple[bytes, float, float]:
    """Runs a short peershare command to completion; returns (stdout, wall s, CPU s)."""
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    with open(out_path, "wb") as o, open(err_path, "wb") as e:
        p = common.spawn(argv, o, e)
        t0 = time.perf_counter()
        p.go()
        code, cpu, _ = common.reap(p, timeout)
        wall = time.perf_counter() - t0
    if code != 0:
        raise BenchError(f"{what} failed (exit {code}): {tail(err_path)}")
    return out_path.read_bytes(), wall, cpu


def prepare_seeders(binary: Path, work: Path, logs: Path, src: Path, size: int, count: int
                    ) -> tuple[str, list[Path], dict]:
    """`count` seeder data dirs that all share `src`. The first one hashes it
    (`peershare share`, timed for information); the others get a copy of its
    library.db and manifests/ (library paths are absolute, node IDs are not
    copied: every seeder makes its own), checked with `peershare shared`.
    Should a copy not be accepted, that dir falls back to a real `share`."""
    dirs = [work / f"seed-{i}" for i in range(count)]
    for d in dirs:
        d.mkdir()
    out, wall, cpu = run_tool([binary, "--data-dir", dirs[0], "-q", "share", "--json", src],
                              "peershare share", logs, "share-0")
    try:
        file_id = json.loads(out)[0]["id"]
    except (ValueError, KeyError, IndexError) as e:
        raise BenchError(f"cannot parse `peershare share --json` output ({e}): {out[:500]!r}")
    hashing = {"wall_s": wall, "cpu_s": cpu, "mb_per_s": size / MB / wall}
    copied = 0
    for i, d in enumerate(dirs[1:], 1):
        try:
            # (The share has exited: its log is checkpointed into the database.)
            shutil.copy2(dirs[0] / "library.db", d / "library.db")
            if (dirs[0] / "manifests").is_dir():
                shutil.copytree(dirs[0] / "manifests", d / "manifests")
            out, _, _ = run_tool([binary, "--data-dir", d, "-q", "shared", "--json"],
                                 "peershare shared", logs, f"shared-{i}")
            ok = any(f.get("id") == file_id for f in json.loads(out))
        except (OSError, ValueError, AttributeError, BenchError):
            ok = False
        if ok:
            copied += 1
            continue
        shutil.rmtree(d)
        d.mkdir()
        out, _, _ = run_tool([binary, "--data-dir", d, "-q", "share", "--json", src],
                             "peershare share", logs, f"share-{i}")
        if json.loads(out)[0]["id"] != file_id:
            raise BenchError(f"seeder {i} got a different file ID for the same file")
    hashing["copied_libraries"] = copied
    return file_id, dirs, hashing


@dataclass
class Seeder:
    child: common.Child
    port: int
    err_path: Path


def _listening_port(out_path: Path) -> int | None:
    """The port of the `listening on IP:PORT` line in a seeder's stdout file,
    None while that line is not complete yet."""
    data = out_path.read_bytes()
    if b"\n" not in data:
        return None
    line = data.split(b"\n", 1)[0].decode(errors="replace").strip()
    if not line.startswith("listening on "):
        raise BenchError(f"unexpected first line from peershare serve: {line!r}")
    return int(line.rsplit(":", 1)[1])


def start_seeders(binary: Path, dirs: list[Path], rate: str | None, logs: Path, tag: str
                  ) -> list[Seeder]:
    """Starts one `peershare serve --listen 127.0.0.1:0 --no-discovery` per
    data dir, all at once, and waits for each one's `listening on` line.
    Their stdout goes to a file, not a pipe: bench/run.py starts programs
    through /bin/sh, whose redirections only take fds 0-9, so this process
    must not hold one pipe per seeder open."""
    started: list[tuple[common.Child, Path, Path]] = []
    seeders: list[Seeder] = []
    try:
        for i, d in enumerate(dirs):
            argv = [binary, "--data-dir", d, "serve", "--listen", "127.0.0.1:0", "--no-discovery"]
            if rate is not None:
                argv += ["--max-upload-rate", rate]
            out_path = logs / f"serve-{tag}-{i}.out"
            err_path = logs / f"serve-{tag}-{i}.err"
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                started.append((common.start(argv, out, err), out_path, err_path))
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        for c, out_path, err_path in started:
            while (port := _listening_port(out_path)) is None:
                if common.exited(c):
                    raise BenchError(f"peershare serve exited (status {c.returncode}) before "
                                     f"listening: {tail(err_path)}")
                if time.monotonic() > deadline:
                    raise BenchError(f"peershare serve printed no `listening on` line in "
                                     f"{SERVER_START_TIMEOUT:.0f} s: {tail(err_path)}")
                time.sleep(0.005)
            seeders.append(Seeder(c, port, err_path))
    except BaseException:
        stop_seeders([Seeder(c, 0, e) for c, _, e in started if c.returncode is None], quiet=True)
        raise
    return seeders


def stop_seeders(seeders: list[Seeder], quiet: bool = False) -> list[tuple[int, float, float]]:
    """SIGTERM to all, then reaps each: [(exit code, lifetime CPU s, peak RSS MiB)]."""
    for s in seeders:
        s.child.signal(signal.SIGTERM)
    results = []
    for s in seeders:
        try:
            code, cpu, rss = common.reap(s.child, STOP_TIMEOUT)
        except BenchError:
            if quiet:
                continue
            raise
        if code != 0 and not quiet:
            log(f"warning: peershare serve exited with {code} after SIGTERM: {tail(s.err_path)}")
        results.append((code, cpu, rss))
    return results


def check_encryption(binary: Path, err_paths: list[Path]) -> None:
    """With --plaintext every serve and get must have said it does not
    encrypt (else the binary lacks the insecure-plaintext feature and the
    run was TLS after all); without it, none may have."""
    plaintext = os.environ.get(common.PLAINTEXT_ENV) == "1"
    for path in err_paths:
        try:
            warned = common.PLAINTEXT_WARNING in path.read_text(errors="replace")
        except OSError:
            warned = False
        if plaintext and not warned:
            raise BenchError(f"{binary} did not print {common.PLAINTEXT_WARNING!r} ({path.name}): "
                             f"--plaintext needs a build with --features insecure-plaintext: "
                             f"`{common.PLAINTEXT_BUILD}`, then --bin target/plaintext/release/peershare")
        if not plaintext and warned:
            raise BenchError(f"{path.name}: ran without TLS although {common.PLAINTEXT_ENV} was unset")


def run_once(binary: Path, sc: Scenario, seed_dirs: list[Path], file_id: str, work: Path,
             logs: Path, size: int, sha: str, index: int) -> dict:
    """One download of the file by a fresh `get` (fresh data dir, fresh output)
    from `sc.seeders` freshly started seeders."""
    tag = f"{index}"
    out = work / f"out-{index}.bin"
    get_dir = work / f"get-{index}"
    common.remove_output(out)
    get_dir.mkdir()
    common.settle()  # earlier runs' dirty pages are written back now, untimed
    rate_bps = sc.rate_bps
    timeout = RUN_TIMEOUT
    if rate_bps:
        timeout = max(timeout, 3 * size / (sc.seeders * rate_bps) + 60)
    seeders = start_seeders(binary, seed_dirs[:sc.seeders], sc.rate, logs, tag)
    try:
        argv = [binary, "--data-dir", get_dir, "-q", "get", file_id]
        for s in seeders:
            argv += ["--peer", f"127.0.0.1:{s.port}"]
        argv += ["-o", out, "--no-discovery", "--json"]
        get_out, get_err = logs / f"get-{tag}.out", logs / f"get-{tag}.err"
        with open(get_out, "wb") as o, open(get_err, "wb") as e:
            g = common.spawn(argv, o, e)
            seed_cpu0 = [cpu_snapshot(s.child.pid) for s in seeders]
            busy0, total0 = machine_cpu()
            t0 = time.perf_counter()
            g.go()
            g_code, g_cpu, g_rss = common.reap(g, timeout)
            wall = time.perf_counter() - t0
            busy1, total1 = machine_cpu()
            seed_cpu1 = [cpu_snapshot(s.child.pid) for s in seeders]
    finally:
        stopped = stop_seeders(seeders)
    if g_code != 0:
        raise BenchError(f"peershare get failed (exit {g_code}): {tail(get_err)}")
    check_encryption(binary, [get_err] + [s.err_path for s in seeders])
    verify(out, size, sha)
    common.remove_output(out)
    shutil.rmtree(get_dir, ignore_errors=True)

    deltas = [cpu_delta(a, b) for a, b in zip(seed_cpu0, seed_cpu1)]
    seed_cpu = [d for d, _ in deltas]
    peers = []
    summary = {}
    try:
        summary = json.loads(get_out.read_text())
        peers = [{"addr": p.get("addr"), "bytes": p.get("bytes", 0), "chunks": p.get("chunks"),
                  "corrupt": p.get("corrupt"), "dropped": p.get("dropped")}
                 for p in summary.get("peers", [])]
    except (ValueError, AttributeError):
        log(f"warning: cannot parse `get --json` output: {tail(get_out, 300)}")
    peer_bytes = [p["bytes"] or 0 for p in peers]
    fair = size / sc.seeders
    busy = busy1 - busy0
    return {
        "scenario": sc.key,
        "wall_s": wall,
        "mb_per_s": size / MB / wall,
        "get_cpu_s": g_cpu,
        "seeders_cpu_s": sum(seed_cpu),
        "seeders_cpu_s_each": seed_cpu,
        "seeders_cpu_exact": all(exact for _, exact in deltas),
        "seeders_cpu_s_lifetime": sum(c for _, c, _ in stopped),
        "get_rss_mib": g_rss,
        "seeder_rss_mib_max": max((r for _, _, r in stopped), default=0.0),
        "machine_busy_cpu_s": busy,
        "machine_busy_pct": 100 * busy / (total1 - total0) if total1 > total0 else 0.0,
        "other_cpu_s": busy - g_cpu - sum(seed_cpu),
        "peers_used": sum(1 for b in peer_bytes if b > 0),
        "peer_share_min": min(peer_bytes) / fair if peer_bytes else None,
        "peer_share_max": max(peer_bytes) / fair if peer_bytes else None,
        "peers": peers,
        "get_reported_seconds": summary.get("seconds"),
        "bytes_received": summary.get("bytes_received"),
    }


# --------------------------------------------------------------------------
# Reporting


def summarize(sc: Scenario, runs: list[dict], size: int) -> dict:
    gib = size / GIB
    med = statistics.median
    shares_min = [r["peer_share_min"] for r in runs if r["peer_share_min"] is not None]
    shares_max = [r["peer_share_max"] for r in runs if r["peer_share_max"] is not None]
    rate_bps = sc.rate_bps
    s = {
        "scenario": sc.key,
        "name": sc.name,
        "seeders": sc.seeders,
        "rate": sc.rate,
        "rate_bytes_per_s": rate_bps,
        "runs": len(runs),
        "wall_s_median": med(r["wall_s"] for r in runs),
        "wall_s_min": min(r["wall_s"] for r in runs),
        "wall_s_max": max(r["wall_s"] for r in runs),
        "mb_per_s_median": med(r["mb_per_s"] for r in runs),
        "mib_per_s_median": med(size / MIB / r["wall_s"] for r in runs),
        "get_cpu_s_per_gib_median": med(r["get_cpu_s"] / gib for r in runs),
        "seeders_cpu_s_per_gib_median": med(r["seeders_cpu_s"] / gib for r in runs),
        "total_cpu_s_per_gib_median": med((r["get_cpu_s"] + r["seeders_cpu_s"]) / gib for r in runs),
        "machine_busy_pct_median": med(r["machine_busy_pct"] for r in runs),
        "other_cpu_s_median": med(r["other_cpu_s"] for r in runs),
        "get_rss_mib_median": med(r["get_rss_mib"] for r in runs),
        "get_rss_mib_max": max(r["get_rss_mib"] for r in runs),
        "seeder_rss_mib_max": max(r["seeder_rss_mib_max"] for r in runs),
        "peers_used_min": min(r["peers_used"] for r in runs),
        "peer_share_min": min(shares_min) if shares_min else None,
        "peer_share_max": max(shares_max) if shares_max else None,
    }
    if rate_bps:
        s["fraction_of_cap_median"] = s["mb_per_s_median"] * MB / (sc.seeders * rate_bps)
    return s


def add_ratios(summaries: dict[str, dict]) -> None:
    """vs_one: this scenario's median MB/s over the 1-seeder scenario's with the
    same rate limit (unlimited: the swarm ratio; limited: the speed-up)."""
    for s in summaries.values():
        base = summaries.get(Scenario(1, s["rate"]).key)
        s["vs_one_seeder"] = (s["mb_per_s_median"] / base["mb_per_s_median"]) if base else None


def evaluate_targets(summaries: dict[str, dict]) -> tuple[list[dict], list[str]]:
    targets, notes = [], []
    for s in summaries.values():
        if s["seeders"] == 1:
            continue
        if s["rate"] is None:
            if s["vs_one_seeder"] is None:
                notes.append(f"{s['name']}: no swarm ratio (the 1-seeder unlimited scenario was not run)")
                continue
            targets.append({
                "name": f"{s['name']}: throughput >= {TARGET_SWARM_RATIO:.2f}x 1 seeder",
                "value": f"{s['vs_one_seeder']:.2f}x ({s['mb_per_s_median']:.0f} vs "
                         f"{s['mb_per_s_median'] / s['vs_one_seeder']:.0f} MB/s)",
                "pass": s["vs_one_seeder"] >= TARGET_SWARM_RATIO,
            })
        else:
            cap = s["seeders"] * s["rate_bytes_per_s"] / MB
            speedup = "n/a (no 1-seeder run at this rate)" if s["vs_one_seeder"] is None \
                else f"{s['vs_one_seeder']:.2f}x the 1-seeder throughput (ideal {s['seeders']}.00x)"
            notes.append(f"{s['name']}: {speedup}; {s['mb_per_s_median']:.1f} MB/s = "
                         f"{100 * s['fraction_of_cap_median']:.0f}% of the {s['seeders']} x "
                         f"{s['rate_bytes_per_s'] / MB:g} = {cap:g} MB/s cap")
    return targets, notes


def fmt_share(lo: float | None, hi: float | None) -> str:
    if lo is None or hi is None:
        return "-"
    return f"{100 * lo:.0f}-{100 * hi:.0f}%"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


def print_report(size: int, summaries: dict[str, dict], targets: list[dict], notes: list[str],
                 env: dict) -> None:
    print()
    print(f"File: {size / MIB:g} MiB ({size / MB:.1f} MB), loopback 127.0.0.1, {env['runs']} run(s) per "
          f"scenario after {env['warmup']} warm-up, interleaved; medians unless noted.")
    print(f"Binary: {env['binary']} (built {env['binary_mtime']}); connections: {env['encryption']}.")
    print(f"Machine: {env['cpus']} CPUs; load average before {env['load_before']}, after "
          f"{env['load_after']}; work dir on {env['filesystem']}.")
    h = env["hashing"]
    print(f"Hashing (peershare share, once): {h['wall_s']:.2f} s = {h['mb_per_s']:.0f} MB/s; "
          f"{h['copied_libraries']} more seeder libraries copied from it.")
    print()
    header = ["scenario", "runs", "wall s", "min s", "max s", "MB/s", "MiB/s", "vs 1 seeder",
              "get CPU s/GiB", "all CPU s/GiB", "busy %", "get RSS MiB", "seed RSS MiB",
              "peers used", "bytes/peer"]
    rows = []
    for s in summaries.values():
        vs = "-" if s["vs_one_seeder"] is None else f"{s['vs_one_seeder']:.2f}x"
        rows.append([s["name"], str(s["runs"]), f"{s['wall_s_median']:.3f}", f"{s['wall_s_min']:.3f}",
                     f"{s['wall_s_max']:.3f}", f"{s['mb_per_s_median']:.1f}", f"{s['mib_per_s_median']:.1f}",
                     vs, f"{s['get_cpu_s_per_gib_median']:.2f}", f"{s['total_cpu_s_per_gib_median']:.2f}",
                     f"{s['machine_busy_pct_median']:.0f}", f"{s['get_rss_mib_median']:.1f}",
                     f"{s['seeder_rss_mib_max']:.1f}", f"{s['peers_used_min']}/{s['seeders']}",
                     fmt_share(s["peer_share_min"], s["peer_share_max"])])
    print_table(header, rows)
    print()
    print("vs 1 seeder = median MB/s / median MB/s of the 1-seeder scenario with the same limit.")
    print("CPU per GiB: get alone, and get + all seeders (seeders: /proc CPU during the download); "
          "busy % = whole machine, all CPUs.")
    print(f"RSS: get median, seeders worst (ru_maxrss; floor {env['rss_floor_mib']:.1f} MiB). "
          "peers used = fewest peers that sent data in a run;")
    print("bytes/peer = smallest-largest share a peer sent, in % of an even split (size / seeders), over all runs.")
    print()
    print("Targets:")
    if not targets:
        print("  (none evaluated: needs the 1-seeder and a multi-seeder unlimited scenario)")
    for t in targets:
        print(f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['name']}: {t['value']}")
    if notes:
        print("Rate-limited / other:")
        for n in notes:
            print(f"  {n}")


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Swarm benchmark: one peershare get of the same file from several seeders on loopback.",
        epilog="Scenarios: comma-separated; all (default) = unlimited,limited; unlimited = 1,2,4,8; "
               "limited = 1@LIMIT,4@LIMIT; N = N seeders, no limit; N@RATE = N seeders, each "
               "serve --max-upload-rate RATE (e.g. 4@100Mbit).")
    ap.add_argument("--size", type=parse_size, metavar="SIZE", default=parse_size(DEFAULT_SIZE),
                    help=f"test file size, e.g. 1GiB, 64MiB, 500MB (default {DEFAULT_SIZE})")
    ap.add_argument("--runs", type=int, default=3, metavar="N", help="recorded runs per scenario (default 3)")
    ap.add_argument("--warmup", type=int, default=1, metavar="N",
                    help="unrecorded 1-seeder unlimited downloads first (default 1)")
    ap.add_argument("--scenarios", default="all", metavar="LIST", help="which scenarios (default all; see below)")
    ap.add_argument("--limit", default=DEFAULT_LIMIT, metavar="RATE",
                    help=f"per-seeder upload rate of the `limited` scenarios (default {DEFAULT_LIMIT})")
    ap.add_argument("--bin", "--binary", dest="binary", type=Path, default=DEFAULT_BINARY, metavar="PATH",
                    help="peershare binary (default target/release/peershare)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()), metavar="DIR",
                    help="a fresh temporary directory is made (and removed) inside it (default /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, source file)")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write all results as JSON to FILE")
    ap.add_argument("--plaintext", action="store_true",
                    help=f"run every serve and get with {common.PLAINTEXT_ENV}=1 (no TLS); needs --bin of a "
                         "build with --features insecure-plaintext (checked on every run)")
    args = ap.parse_args()
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be at least 1, --warmup at least 0")
    try:
        parse_rate(args.limit)
        scenarios = parse_scenarios(args.scenarios, args.limit)
    except argparse.ArgumentTypeError as e:
        ap.error(str(e))

    binary = args.binary.resolve()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        common.die(f"{binary} not found: run `cargo build --release -p peershare-cli` first, "
                   "or pass --bin PATH", 2)
    if sys.platform != "linux":
        common.die("Linux only (/proc, os.wait4 rusage)", 2)
    if not common.enable_subreaper():
        log("warning: cannot become a child subreaper (prctl): peak RSS values are floored at this "
            "Python process's own peak RSS")
    floor = common.rusage_floor()
    # Inherited by every program started (spawn's default environment).
    if args.plaintext:
        os.environ[common.PLAINTEXT_ENV] = "1"
    else:
        os.environ.pop(common.PLAINTEXT_ENV, None)

    size = args.size
    args.workdir.mkdir(parents=True, exist_ok=True)
    need = 2 * size + 64 * MIB  # source + one output at a time
    free = shutil.disk_usage(args.workdir).free
    if free < need:
        common.die(f"{args.workdir} needs about {need / GIB:.2f} GiB free (source + one output), "
                   f"has {free / GIB:.2f} GiB")
    work = Path(tempfile.mkdtemp(prefix="peershare-swarm-", dir=args.workdir)).resolve()
    try:
        return bench(args, binary, scenarios, size, work, floor)
    finally:
        common.kill_children()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(args, binary: Path, scenarios: list[Scenario], size: int, work: Path, floor: float) -> int:
    logs = work / "logs"
    logs.mkdir()
    load_before = common.loadavg()
    binary_mtime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(binary.stat().st_mtime))
    log(f"work dir {work}; scenarios: {', '.join(s.name for s in scenarios)}")

    src = work / "source.bin"
    log(f"creating {src} ({size / MIB:g} MiB of os.urandom) ...")
    sha = make_source(src, size)
    common.read_through(src)  # in the page cache for hashing and every seeder alike

    max_seeders = max(s.seeders for s in scenarios)
    log(f"sharing it from {max_seeders} seeder data dir(s) ...")
    file_id, seed_dirs, hashing = prepare_seeders(binary, work, logs, src, size, max_seeders)
    log(f"  hashing {hashing['wall_s']:.2f} s ({hashing['mb_per_s']:.0f} MB/s); id {file_id}")

    def one(sc: Scenario, index: int, label: str) -> dict:
        r = run_once(binary, sc, seed_dirs, file_id, work, logs, size, sha, index)
        share = fmt_share(r["peer_share_min"], r["peer_share_max"])
        log(f"{label:<14} {sc.name:<28} {r['wall_s']:8.3f} s {r['mb_per_s']:8.1f} MB/s  "
            f"CPU get {r['get_cpu_s']:5.2f} s seeders {r['seeders_cpu_s']:5.2f} s"
            f"{'' if r['seeders_cpu_exact'] else '~'} other "
            f"{r['other_cpu_s']:5.2f} s  RSS get {r['get_rss_mib']:5.1f} MiB  "
            f"peers {r['peers_used']}/{sc.seeders} {share}")
        return r

    index = 0
    warmups = []
    for w in range(args.warmup):
        warmups.append(one(Scenario(1), index, f"warm-up {w + 1}/{args.warmup}"))
        index += 1
    results: dict[str, list[dict]] = {s.key: [] for s in scenarios}
    for k in range(args.runs):
        # Interleaved, alternating direction (ABC CBA ...): drift and noise
        # spread over all scenarios alike.
        order = scenarios if k % 2 == 0 else list(reversed(scenarios))
        for sc in order:
            results[sc.key].append(one(sc, index, f"run {k + 1}/{args.runs}"))
            index += 1

    summaries = {sc.key: summarize(sc, results[sc.key], size) for sc in scenarios}
    add_ratios(summaries)
    targets, notes = evaluate_targets(summaries)
    env = {"cpus": os.cpu_count(), "load_before": load_before, "load_after": common.loadavg(),
           "filesystem": common.filesystem(work), "binary": str(binary), "binary_mtime": binary_mtime,
           "runs": args.runs, "warmup": args.warmup, "rss_floor_mib": floor, "hashing": hashing,
           "encryption": f"none ({common.PLAINTEXT_ENV}=1)" if args.plaintext else "TLS 1.3"}
    print_report(size, summaries, targets, notes, env)

    if args.json:
        doc = {
            "size_bytes": size,
            "file_id": file_id,
            "sha256": sha,
            "scenarios": [s.key for s in scenarios],
            "target_swarm_ratio": TARGET_SWARM_RATIO,
            "machine": env,
            "summary": summaries,
            "targets": targets,
            "notes": notes,
            "warmup": warmups,
            "raw": results,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"wrote {args.json}")
    return 0 if all(t["pass"] for t in targets) else 3


if __name__ == "__main__":
    # Also when started with SIGINT ignored (e.g. `&` in a script): Ctrl-C
    # must still clean up.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, common._on_signal)
    signal.signal(signal.SIGHUP, common._on_signal)
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: ABORTED: {e}", file=sys.stderr)
        if "--keep" not in sys.argv:
            print("bench: (run with --keep to keep the work dir with every process's log)", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        common.kill_children()
