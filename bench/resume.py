#!/usr/bin/env python3
"""What checking a resumed download costs: `peershare get` resuming a 1 GiB
download whose part file holds every chunk and whose state file records
them all (as after a kill just before the final rename), against
`sha256sum` of the same part file in the same invocation, interleaved.

The resumed `get` hashes every recorded chunk again before it counts it
(on all cores), then finishes: nothing is fetched. So its wall time is the
re-verification plus a connection and the final fsync and link; `sha256sum`
is one core hashing the same bytes.

Usage (from the workspace root, as root for --cold):

    cargo build --release -p peershare-cli && python3 bench/resume.py [--size-mib 1024] [--runs 5] [--cold]

--cold drops the page cache before every timed run (a resume after a
reboot reads the part file from the disk); without it the part file is in
the page cache (a resume right after a kill).

Standard library only (Python 3.11+), Linux only. Process handling (exact
per-process rusage) is shared with bench/run.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import statistics
import struct
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as common  # noqa: E402
from run import BenchError, GIB, MIB, log, tail  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO_ROOT / "target" / "release" / "peershare"
DEFAULT_WORK_DIR = Path("/tmp/peershare-bench-resume")
RUN_TIMEOUT = 600.0

# The state file layout (crates/peershare/src/partial.rs).
STATE_MAGIC = b"PSRESUME"
STATE_VERSION = 1


def chunk_size_for(size: int) -> int:
    """As peershare_proto::manifest::chunk_size_for."""
    wanted = max(-(-size // 1024), 1)
    pow2 = 1 << (wanted - 1).bit_length()
    return min(max(pow2, 64 * 1024), 8 * MIB)


def state_record(file_id: str, size: int) -> bytes:
    """A state file recording every chunk of the file as done."""
    n = -(-size // chunk_size_for(size))
    bits = bytearray((n + 7) // 8)
    for i in range(n):
        bits[i // 8] |= 1 << (i % 8)
    body = (STATE_MAGIC + bytes([STATE_VERSION]) + bytes.fromhex(file_id)
            + struct.pack(">QI", size, n) + bytes(bits))
    return body + hashlib.sha256(body).digest()


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def prepare(src: Path, out: Path, file_id: str, size: int) -> Path:
    """The part and state files of a download that has every chunk."""
    part = Path(str(out) + ".peershare-part")
    state = Path(str(out) + ".peershare-state")
    common.remove_output(out)
    shutil.copyfile(src, part)
    state.write_bytes(state_record(file_id, size))
    os.sync()
    return part


def run_resume(binary: Path, get_dir: Path, file_id: str, port: int, out: Path,
               logs: Path, i: int, size: int) -> dict:
    o, e = logs / f"get-{i}.out", logs / f"get-{i}.err"
    with open(o, "wb") as fo, open(e, "wb") as fe:
        g = common.spawn([binary, "--data-dir", get_dir, "-q", "get", file_id, "--peer",
                          f"127.0.0.1:{port}", "-o", out, "--json"], fo, fe)
        t0 = time.perf_counter()
        g.go()
        code, cpu, rss = common.reap(g, RUN_TIMEOUT)
        wall = time.perf_counter() - t0
    if code != 0:
        raise BenchError(f"get failed (exit {code}): {tail(e)}")
    summary = json.loads(o.read_text())
    if summary["bytes_received"] != 0 or summary["bytes_resumed"] != size:
        raise BenchError(f"the resume fetched data: {summary}")
    return {"wall": wall, "cpu": cpu, "rss": rss}


def run_sha256sum(part: Path, logs: Path, i: int) -> dict:
    with open(logs / f"sha-{i}.out", "wb") as fo:
        p = common.spawn(["sha256sum", part], fo, common.subprocess.DEVNULL)
        t0 = time.perf_counter()
        p.go()
        code, cpu, rss = common.reap(p, RUN_TIMEOUT)
        wall = time.perf_counter() - t0
    if code != 0:
        raise BenchError("sha256sum failed")
    return {"wall": wall, "cpu": cpu, "rss": rss}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="drop the page cache before each run (root)")
    ap.add_argument("--binary", type=Path, default=DEFAULT_BINARY)
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK_DIR)
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    if not args.binary.exists():
        common.die(f"no binary at {args.binary}: cargo build --release -p peershare-cli")
    if args.cold and os.geteuid() != 0:
        common.die("--cold drops the page cache: run as root")
    common.enable_subreaper()
    signal.signal(signal.SIGTERM, common._on_signal)
    args.work.mkdir(parents=True, exist_ok=True)
    logs = args.work / "logs"
    logs.mkdir(exist_ok=True)
    size = args.size_mib * MIB
    src, _sha = common.ensure_source(args.work, args.size_mib)
    serve_dir, get_dir = args.work / "serve", args.work / "get"
    shutil.rmtree(get_dir, ignore_errors=True)
    file_id, _ = common.share(args.binary, serve_dir, src, size)
    server, port, server_out = common.start_server(args.binary, serve_dir, logs / "serve.err")
    out = args.work / "out.bin"
    resumes, sums = [], []
    try:
        for i in range(args.runs + 1):  # the first pair is a warm-up
            part = prepare(src, out, file_id, size)
            if args.cold:
                drop_caches()
            s = run_sha256sum(part, logs, i)
            if args.cold:
                drop_caches()
            r = run_resume(args.binary, get_dir, file_id, port, out, logs, i, size)
            if out.stat().st_size != size:
                raise BenchError("the resumed output has the wrong size")
            if i > 0:
                resumes.append(r)
                sums.append(s)
            log(f"run {i}{' (warm-up)' if i == 0 else ''}: resume {r['wall']:.3f} s "
                f"({r['cpu']:.2f} CPU-s, {r['rss']:.0f} MiB), sha256sum {s['wall']:.3f} s")
    finally:
        server.signal(signal.SIGTERM)
        common.reap(server, 30.0)
        os.close(server_out)
        common.kill_children()
    gib = size / GIB
    result = {
        "size_mib": args.size_mib,
        "runs": args.runs,
        "cache": "cold" if args.cold else "warm",
        "resume_wall_s": median(resumes, "wall"),
        "resume_cpu_s": median(resumes, "cpu"),
        "resume_peak_rss_mib": median(resumes, "rss"),
        "sha256sum_wall_s": median(sums, "wall"),
        "sha256sum_cpu_s": median(sums, "cpu"),
    }
    result["resume_s_per_gib"] = result["resume_wall_s"] / gib
    result["resume_vs_sha256sum"] = result["resume_wall_s"] / result["sha256sum_wall_s"]
    print(f"{args.size_mib} MiB resume, every chunk re-verified, {result['cache']} cache, "
          f"medians of {args.runs} runs:")
    print(f"  peershare get (resume): {result['resume_wall_s']:.3f} s wall "
          f"({result['resume_s_per_gib']:.3f} s/GiB), {result['resume_cpu_s']:.2f} CPU-s, "
          f"peak RSS {result['resume_peak_rss_mib']:.0f} MiB")
    print(f"  sha256sum (one core):   {result['sha256sum_wall_s']:.3f} s wall, "
          f"{result['sha256sum_cpu_s']:.2f} CPU-s")
    print(f"  resume / sha256sum:     {result['resume_vs_sha256sum']:.2f}x")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        common.kill_children()
        common.die(str(e))
    except KeyboardInterrupt:
        common.kill_children()
        common.die("interrupted", 130)
