#!/usr/bin/env python3
"""Loopback throughput benchmark: peershare vs socat.

Usage (from the workspace root):

    cargo build --release && python3 bench/run.py [--size-mib 1024] [--runs 5] [--json]

What TLS costs: also build with the `insecure-plaintext` feature into its own
target dir, and measure both (and socat) interleaved in one invocation:

    cargo build --release -p peershare-cli --features insecure-plaintext --target-dir target/plaintext
    python3 bench/run.py --plaintext-binary   # = target/plaintext/release/peershare

Standard library only (Python 3.11+). Linux only (uses os.wait4 rusage and
/proc/net/tcp). See bench/README.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO_ROOT / "target" / "release" / "peershare"
DEFAULT_WORK_DIR = Path("/tmp/peershare-bench")

# The TLS-vs-plaintext comparison (--plaintext-binary): a build with the
# `insecure-plaintext` cargo feature skips TLS when this variable is 1 for
# both serve and get, and then says so on stderr (checked on every run).
DEFAULT_PLAINTEXT_BINARY = REPO_ROOT / "target" / "plaintext" / "release" / "peershare"
PLAINTEXT_BUILD = ("cargo build --release -p peershare-cli --features insecure-plaintext "
                   "--target-dir target/plaintext")
PLAINTEXT_ENV = "PEERSHARE_INSECURE_PLAINTEXT"
PLAINTEXT_WARNING = "connections are NOT encrypted"
TLS_TOOL = "peershare"  # the default, measured build: TLS 1.3 (the targets apply to it)
PLAIN_TOOL = "peershare-plaintext"
BASE_TOOL = "peershare-baseline"  # --baseline-binary: another release build, e.g. the previous commit

MB = 1_000_000
MIB = 1 << 20
GIB = 1 << 30
BLOCK = 4 * MIB  # block size for writing/reading the test file in Python

# Targets from the issue.
TARGET_MBPS = 500.0  # peershare median throughput, MB/s (10^6 bytes)
TARGET_SOCAT_RATIO = 0.5  # peershare throughput / socat throughput
TARGET_CPU_PER_GIB = 3.0  # CPU seconds per GiB, both processes together
TARGET_RSS_MIB = 100.0  # peak RSS of each process, MiB (strictly below)

SERVER_START_TIMEOUT = 30.0
LISTEN_TIMEOUT = 10.0
RUN_TIMEOUT = 600.0  # per transfer, generous for slow machines


class BenchError(Exception):
    """A failure that must abort the benchmark (wrong output, process failed...)."""


# --------------------------------------------------------------------------
# Child processes.
#
# Peak RSS from rusage needs care: Linux starts a child's ru_maxrss at the
# high-water RSS of the process it was forked from (kept across exec), so any
# program Popen starts from this Python process reports at least Python's own
# peak (~15-30 MiB here, more after hashing), whatever it really used. So each
# program is started by a tiny /bin/sh: it forks a subshell in the background,
# prints the subshell's PID and exits. With this process a "child subreaper"
# (prctl), the orphaned subshell is re-parented to us; we then tell it to go
# (a byte on a pipe) and it execs the program, whose own CPU time and peak RSS
# os.wait4(pid) then returns (floor: the subshell's ~1 MiB). The subshell
# waits for "go" so the program cannot exit while /bin/sh is still its parent
# (which could reap it), and so the wall clock starts exactly at "go".

PR_SET_CHILD_SUBREAPER = 36
_subreaper = False


def enable_subreaper() -> bool:
    global _subreaper
    if sys.platform != "linux":
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        _subreaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        _subreaper = False
    return _subreaper


class Child:
    """A program started by spawn(): its pid (our child), once reaped its
    exit code; it runs only after go()."""

    def __init__(self, pid: int, argv: list[str], go_fd: int | None):
        self.pid = pid
        self.argv = argv
        self.returncode: int | None = None
        self._go_fd = go_fd

    @property
    def name(self) -> str:
        return Path(self.argv[0]).name

    def go(self) -> None:
        if self._go_fd is not None:
            try:
                os.write(self._go_fd, b"go\n")
            finally:
                self.close_go()

    def close_go(self) -> None:
        # Closing without "go" makes a waiting subshell exit without exec.
        if self._go_fd is not None:
            os.close(self._go_fd)
            self._go_fd = None

    def signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


_children: list[Child] = []


def spawn(argv: list, stdout, stderr, env: dict | None = None) -> Child:
    """Prepares argv with stdin /dev/null and the given stdout/stderr (file
    objects, fds or subprocess.DEVNULL); it starts on Child.go(). See above
    for why through /bin/sh. `env`: the program's whole environment (None:
    this process's)."""
    argv = [str(a) for a in argv]
    if not _subreaper:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env)
        p.returncode = 0  # reaped with os.wait4 by us; Popen must never wait
        c = Child(p.pid, argv, None)
        _children.append(c)
        return c
    pid_r, pid_w = os.pipe()
    go_r, go_w = os.pipe()
    os.set_inheritable(go_w, False)
    script = (f'{{ read go <&{go_r} && exec "$@" {go_r}<&-; }} {pid_w}>&- </dev/null & '
              f'echo $! >&{pid_w}')
    try:
        sh = subprocess.Popen(["/bin/sh", "-c", script, "sh", *argv], stdin=subprocess.DEVNULL,
                              stdout=stdout, stderr=stderr, pass_fds=(go_r, pid_w), env=env)
    except BaseException:
        for fd in (pid_r, pid_w, go_r, go_w):
            os.close(fd)
        raise
    os.close(go_r)
    os.close(pid_w)
    try:
        with os.fdopen(pid_r, "rb") as f:
            out = f.read()
    finally:
        os.wait4(sh.pid, 0)  # now the subshell is our child
        sh.returncode = 0
    try:
        pid = int(out)
    except ValueError:
        os.close(go_w)
        raise BenchError(f"could not start {argv[0]} (no pid from /bin/sh)")
    c = Child(pid, argv, go_w)
    _children.append(c)
    return c


def start(argv: list, stdout, stderr, env: dict | None = None) -> Child:
    c = spawn(argv, stdout, stderr, env)
    c.go()
    return c


def reap(c: Child, timeout: float | None = None) -> tuple[int, float, float]:
    """Waits for `c` with os.wait4 so the rusage is this process's own.
    Returns (exit code, CPU seconds user+sys, peak RSS in MiB). With a
    timeout, kills the process when it expires and raises BenchError."""
    timed_out = threading.Event()

    def expire():
        timed_out.set()
        c.signal(signal.SIGKILL)

    timer = None
    if timeout is not None:
        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
    try:
        _, status, ru = os.wait4(c.pid, 0)  # blocking: exact wall time, no polling
    finally:
        if timer is not None:
            timer.cancel()
    c.returncode = os.waitstatus_to_exitcode(status)
    _forget(c)
    if timed_out.is_set():
        raise BenchError(f"{c.name} timed out after {timeout:.0f} s: {' '.join(c.argv)}")
    cpu = ru.ru_utime + ru.ru_stime
    # ru_maxrss is KiB on Linux (bytes on macOS).
    rss_mib = ru.ru_maxrss / (MIB if sys.platform == "darwin" else 1024)
    return c.returncode, cpu, rss_mib


def exited(c: Child) -> bool:
    """Non-blocking check that reaps `c` if it has exited (rusage discarded)."""
    pid, status, _ = os.wait4(c.pid, os.WNOHANG)
    if pid == 0:
        return False
    c.returncode = os.waitstatus_to_exitcode(status)
    _forget(c)
    return True


def _forget(c: Child) -> None:
    try:
        _children.remove(c)
    except ValueError:
        pass


def kill_children() -> None:
    for c in list(_children):
        c.close_go()
        c.signal(signal.SIGKILL)
        try:
            os.wait4(c.pid, 0)
        except ChildProcessError:
            pass
        c.returncode = -9
        _forget(c)
    # Anything else still our child (e.g. started by a /bin/sh that was
    # interrupted before it reported the pid): only processes we started.
    me = os.getpid()
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) != me:
                continue
            pid = int(stat.split("/")[2])
            os.kill(pid, signal.SIGKILL)
            os.wait4(pid, 0)
        except (OSError, ValueError, IndexError):
            pass


def rusage_floor() -> float:
    """Peak RSS (MiB) that rusage reports for a do-nothing program started
    like the measured ones: the smallest value the RSS columns can show."""
    return reap(start(["true"], subprocess.DEVNULL, subprocess.DEVNULL), 10.0)[2]


def _on_signal(signum, _frame):
    # Turn SIGTERM/SIGHUP into an exception so `finally` blocks run.
    raise KeyboardInterrupt(f"signal {signum}")


# --------------------------------------------------------------------------
# Helpers


def die(msg: str, code: int = 1) -> None:
    print(f"bench: {msg}", file=sys.stderr)
    sys.exit(code)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_listening(port: int) -> bool:
    """True when some socket listens on `port` (TCP state 0A in /proc/net/tcp).
    Does not connect: socat's TCP-LISTEN accepts exactly one connection."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def read_through(path: Path) -> None:
    """Reads the file once so it is in the page cache for every measurement."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(BLOCK)
        while f.readinto(buf):
            pass


def remove_output(out: Path) -> None:
    for p in [out, *map(Path, glob.glob(glob.escape(str(out)) + ".peershare-*"))]:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def settle() -> None:
    """Flushes earlier runs' dirty pages (outside any timed region) so one
    run's writeback does not slow the next."""
    os.sync()


def ensure_source(work: Path, size_mib: int) -> tuple[Path, str]:
    """Creates (once) a random file of `size_mib` MiB; returns it and its SHA-256.
    The hash is cached beside it, keyed by size and mtime."""
    src = work / f"random-{size_mib}MiB.bin"
    meta = work / f"random-{size_mib}MiB.sha256.json"
    size = size_mib * MIB
    if src.exists() and src.stat().st_size == size and meta.exists():
        try:
            m = json.loads(meta.read_text())
            st = src.stat()
            if m["size"] == st.st_size and m["mtime_ns"] == st.st_mtime_ns:
                return src, m["sha256"]
        except (ValueError, KeyError):
            pass
    log(f"creating {src} ({size_mib} MiB of os.urandom) ...")
    tmp = src.with_suffix(".tmp")
    h = hashlib.sha256()
    with open(tmp, "wb") as f:
        left = size
        while left:
            block = os.urandom(min(BLOCK, left))
            h.update(block)
            f.write(block)
            left -= len(block)
    os.replace(tmp, src)
    st = src.stat()
    digest = h.hexdigest()
    meta.write_text(json.dumps({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}))
    return src, digest


def verify(out: Path, size: int, want_sha: str, what: str, full: bool) -> None:
    if not out.exists():
        raise BenchError(f"{what}: output {out} does not exist")
    got_size = out.stat().st_size
    if got_size != size:
        raise BenchError(f"{what}: output {out} has {got_size} bytes, expected {size}")
    if full:
        got = sha256_file(out)
        if got != want_sha:
            raise BenchError(f"{what}: output {out} SHA-256 {got} != source {want_sha}")


def tail(path: Path, n: int = 2000) -> str:
    try:
        data = path.read_bytes()[-n:]
        return data.decode(errors="replace").strip()
    except OSError:
        return ""


# --------------------------------------------------------------------------
# Measurements


@dataclass
class Variant:
    """A peershare build to measure: the release binary (TLS) or, for the
    comparison, an `insecure-plaintext` build run with PLAINTEXT_ENV=1. Each
    has its own data dirs (so its own `share` of the source)."""
    tool: str  # TLS_TOOL or PLAIN_TOOL
    binary: Path
    plaintext: bool
    serve_dir: Path
    get_dir: Path
    file_id: str = ""

    @property
    def env(self) -> dict:
        """The environment of its serve and get: ours, PLAINTEXT_ENV=1 for
        the plaintext variant and never set for the TLS one."""
        env = {k: v for k, v in os.environ.items() if k != PLAINTEXT_ENV}
        if self.plaintext:
            env[PLAINTEXT_ENV] = "1"
        return env

    @property
    def log_tag(self) -> str:
        return "" if self.tool == TLS_TOOL else self.tool.removeprefix("peershare")


def check_encryption(v: Variant, logs: dict[str, Path]) -> None:
    """Makes sure a run was what it claims: the plaintext variant's serve
    and get both warn that they do not encrypt (else the binary lacks the
    feature and the run was TLS after all), the TLS variant's never do."""
    for what, path in logs.items():
        try:
            warned = PLAINTEXT_WARNING in path.read_text(errors="replace")
        except OSError:
            warned = False
        if v.plaintext and not warned:
            raise BenchError(f"{v.binary} {what} did not print {PLAINTEXT_WARNING!r} with "
                             f"{PLAINTEXT_ENV}=1: not built with --features insecure-plaintext? "
                             f"Build it with `{PLAINTEXT_BUILD}`.")
        if not v.plaintext and warned:
            raise BenchError(f"{v.binary} {what} ran without TLS although {PLAINTEXT_ENV} was unset")


@dataclass
class Run:
    tool: str  # "peershare" (TLS), "peershare-plaintext", "socat", "socat+fsync"
    wall: float  # seconds
    cpu_sender: float  # CPU seconds
    cpu_receiver: float
    rss_sender_mib: float
    rss_receiver_mib: float
    extra: dict = field(default_factory=dict)

    @property
    def cpu_total(self) -> float:
        return self.cpu_sender + self.cpu_receiver


def share(binary: Path, serve_dir: Path, src: Path, size: int, env: dict | None = None) -> tuple[str, dict]:
    """`peershare share` on a fresh data dir (so it really hashes); timed."""
    if serve_dir.exists():
        shutil.rmtree(serve_dir)
    serve_dir.mkdir(parents=True)
    out_path = serve_dir.parent / "share.out"
    err_path = serve_dir.parent / "share.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = spawn([binary, "--data-dir", serve_dir, "-q", "share", "--json", src], out, err, env)
        t0 = time.perf_counter()
        p.go()
        code, cpu, rss = reap(p, RUN_TIMEOUT)
        wall = time.perf_counter() - t0
    if code != 0:
        raise BenchError(f"peershare share failed (exit {code}): {tail(err_path)}")
    try:
        files = json.loads(out_path.read_text())
        file_id = files[0]["id"]
    except (ValueError, KeyError, IndexError) as e:
        raise BenchError(f"cannot parse `peershare share --json` output ({e}): {tail(out_path)}")
    return file_id, {
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mib": rss,
        "mb_per_s": size / MB / wall,
        "mib_per_s": size / MIB / wall,
    }


def start_server(binary: Path, serve_dir: Path, log_path: Path,
                 env: dict | None = None) -> tuple[Child, int, int]:
    """Starts `peershare serve` on a free loopback port; returns it, the port
    and the read end of its stdout (close it after the server exits)."""
    r, w = os.pipe()
    try:
        with open(log_path, "wb") as err:
            p = start([binary, "--data-dir", serve_dir, "serve", "--no-discovery", "--listen", "127.0.0.1:0"],
                      w, err, env)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    try:
        buf = b""
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"peershare serve printed no `listening on` line in "
                                 f"{SERVER_START_TIMEOUT:.0f} s: {tail(log_path)}")
            ready, _, _ = select.select([r], [], [], left)
            if ready:
                chunk = os.read(r, 4096)
                if not chunk:
                    raise BenchError(f"peershare serve exited before listening: {tail(log_path)}")
                buf += chunk
        line = buf.split(b"\n", 1)[0].decode(errors="replace").strip()
        prefix = "listening on "
        if not line.startswith(prefix):
            raise BenchError(f"unexpected first line from peershare serve: {line!r}")
        port = int(line[len(prefix):].rsplit(":", 1)[1])
    except BaseException:
        os.close(r)
        raise
    return p, port, r


def run_peershare(v: Variant, out: Path, logs: Path, size: int, sha: str, full_verify: bool,
                  index: int) -> Run:
    remove_output(out)
    settle()
    env = v.env
    serve_err = logs / f"serve{v.log_tag}-{index}.err"
    server, port, server_out = start_server(v.binary, v.serve_dir, serve_err, env)
    try:
        get_out, get_err = logs / f"get{v.log_tag}-{index}.out", logs / f"get{v.log_tag}-{index}.err"
        with open(get_out, "wb") as o, open(get_err, "wb") as e:
            # --no-discovery: nothing of a benchmark leaves loopback (a `get`
            # with no node running announces itself on the LAN otherwise).
            g = spawn([v.binary, "--data-dir", v.get_dir, "-q", "get", v.file_id,
                       "--peer", f"127.0.0.1:{port}", "--no-discovery", "-o", out, "--json"],
                      o, e, env)
            t0 = time.perf_counter()
            g.go()
            g_code, g_cpu, g_rss = reap(g, RUN_TIMEOUT)
            wall = time.perf_counter() - t0
        if g_code != 0:
            raise BenchError(f"{v.tool} get failed (exit {g_code}): {tail(get_err)}")
        server.signal(signal.SIGTERM)
        s_code, s_cpu, s_rss = reap(server, 30.0)
    finally:
        os.close(server_out)
    if s_code != 0:
        log(f"warning: {v.tool} serve exited with {s_code} after SIGTERM: {tail(serve_err)}")
    check_encryption(v, {"serve": serve_err, "get": get_err})
    verify(out, size, sha, v.tool, full_verify)
    extra = {"server_exit": s_code}
    try:
        summary = json.loads(get_out.read_text())
        extra["get_reported_seconds"] = summary.get("seconds")
        extra["bytes_received"] = summary.get("bytes_received")
    except ValueError:
        pass
    return Run(v.tool, wall, s_cpu, g_cpu, s_rss, g_rss, extra)


def run_socat(src: Path, out: Path, logs: Path, size: int, sha: str, full_verify: bool,
              index: int) -> tuple[Run, Run]:
    """One socat transfer; returns (socat, socat+fsync) measured on the same
    transfer: the second adds an fsync of the output to the wall time."""
    remove_output(out)
    settle()
    port = free_port()
    r_err, s_err = logs / f"socat-recv-{index}.err", logs / f"socat-send-{index}.err"
    with open(r_err, "wb") as re_, open(s_err, "wb") as se:
        recv = start(["socat", "-u", "-b", "1048576",
                      f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr", f"OPEN:{out},creat,trunc"],
                     subprocess.DEVNULL, re_)
        deadline = time.monotonic() + LISTEN_TIMEOUT
        while not is_listening(port):
            if exited(recv):
                raise BenchError(f"socat receiver exited before listening: {tail(r_err)}")
            if time.monotonic() > deadline:
                raise BenchError(f"socat receiver not listening on {port} after {LISTEN_TIMEOUT:.0f} s")
            time.sleep(0.005)
        # retry= is only a fallback in case /proc/net/tcp lied; normally the
        # first connect succeeds.
        send = spawn(["socat", "-u", "-b", "1048576", f"OPEN:{src}",
                      f"TCP:127.0.0.1:{port},retry=50,interval=0.02"],
                     subprocess.DEVNULL, se)
        t0 = time.perf_counter()
        send.go()
        s_code, s_cpu, s_rss = reap(send, RUN_TIMEOUT)
        r_code, r_cpu, r_rss = reap(recv, RUN_TIMEOUT)
        wall = time.perf_counter() - t0
        fd = os.open(out, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        wall_sync = time.perf_counter() - t0
    if s_code != 0 or r_code != 0:
        raise BenchError(f"socat failed (sender exit {s_code}, receiver exit {r_code}): "
                         f"{tail(s_err)} {tail(r_err)}")
    verify(out, size, sha, "socat", full_verify)
    return (Run("socat", wall, s_cpu, r_cpu, s_rss, r_rss),
            Run("socat+fsync", wall_sync, s_cpu, r_cpu, s_rss, r_rss))


# --------------------------------------------------------------------------
# Reporting


def summarize(runs: list[Run], size: int) -> dict:
    walls = [r.wall for r in runs]
    gib = size / GIB
    med_wall = statistics.median(walls)
    return {
        "runs": len(runs),
        "wall_s_median": med_wall,
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "mb_per_s_median": statistics.median(size / MB / w for w in walls),
        "mib_per_s_median": statistics.median(size / MIB / w for w in walls),
        "cpu_s_per_gib_median": statistics.median(r.cpu_total / gib for r in runs),
        "cpu_sender_s_per_gib_median": statistics.median(r.cpu_sender / gib for r in runs),
        "cpu_receiver_s_per_gib_median": statistics.median(r.cpu_receiver / gib for r in runs),
        "cpu_sender_s_median": statistics.median(r.cpu_sender for r in runs),
        "cpu_receiver_s_median": statistics.median(r.cpu_receiver for r in runs),
        "rss_sender_mib_median": statistics.median(r.rss_sender_mib for r in runs),
        "rss_receiver_mib_median": statistics.median(r.rss_receiver_mib for r in runs),
        "rss_sender_mib_max": max(r.rss_sender_mib for r in runs),
        "rss_receiver_mib_max": max(r.rss_receiver_mib for r in runs),
    }


def filesystem(path: Path) -> str:
    """"device (type)" of the mount holding `path`, from /proc/mounts."""
    best, desc = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                mnt = mnt.replace("\\040", " ")
                if (str(path) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) >= len(best):
                    best, desc = mnt, f"{dev} ({fstype}) on {mnt}"
    except OSError:
        pass
    return desc


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def tls_cost(summaries: dict[str, dict], pairs: list[tuple[Run, Run]], size: int) -> dict | None:
    """TLS against plaintext, from the same invocation: ratios of medians,
    and the median of per-round ratios (TLS and plaintext runs of the same
    round, so slow drift cancels). None without the plaintext variant."""
    if PLAIN_TOOL not in summaries:
        return None
    t, p = summaries[TLS_TOOL], summaries[PLAIN_TOOL]
    so, sf = summaries["socat"], summaries["socat+fsync"]
    gib = size / GIB
    paired = [pt.wall / tl.wall for tl, pt in pairs]  # = TLS MB/s / plaintext MB/s
    paired_cpu = [(tl.cpu_total - pt.cpu_total) / gib for tl, pt in pairs]

    def variant(s: dict) -> dict:
        return {
            "mb_per_s_median": s["mb_per_s_median"],
            "mib_per_s_median": s["mib_per_s_median"],
            "x_socat": s["mb_per_s_median"] / so["mb_per_s_median"],
            "x_socat_fsync": s["mb_per_s_median"] / sf["mb_per_s_median"],
            "cpu_get_s_per_gib_median": s["cpu_receiver_s_per_gib_median"],
            "cpu_serve_s_per_gib_median": s["cpu_sender_s_per_gib_median"],
            "cpu_total_s_per_gib_median": s["cpu_s_per_gib_median"],
            "rss_serve_mib_median": s["rss_sender_mib_median"],
            "rss_serve_mib_max": s["rss_sender_mib_max"],
            "rss_get_mib_median": s["rss_receiver_mib_median"],
            "rss_get_mib_max": s["rss_receiver_mib_max"],
        }

    return {
        "tls": variant(t),
        "plaintext": variant(p),
        "throughput_ratio_tls_over_plaintext": t["mb_per_s_median"] / p["mb_per_s_median"],
        "throughput_ratio_paired_median": statistics.median(paired),
        "throughput_ratio_paired_min": min(paired),
        "throughput_ratio_paired_max": max(paired),
        "cpu_ratio_tls_over_plaintext": t["cpu_s_per_gib_median"] / p["cpu_s_per_gib_median"],
        "cpu_extra_s_per_gib": t["cpu_s_per_gib_median"] - p["cpu_s_per_gib_median"],
        "cpu_extra_s_per_gib_paired_median": statistics.median(paired_cpu),
        "cpu_extra_get_s_per_gib": t["cpu_receiver_s_per_gib_median"] - p["cpu_receiver_s_per_gib_median"],
        "cpu_extra_serve_s_per_gib": t["cpu_sender_s_per_gib_median"] - p["cpu_sender_s_per_gib_median"],
    }


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))


def print_tls_cost(cost: dict, env: dict) -> None:
    print(f"TLS cost: {TLS_TOOL} (TLS 1.3, the release build) vs {PLAIN_TOOL} (--features insecure-plaintext, "
          f"{PLAINTEXT_ENV}=1 for serve and get), interleaved in the same invocation; medians.")
    header = ["variant", "MB/s", "MiB/s", "x socat", "x socat+fsync", "CPU s/GiB get", "serve", "total",
              "RSS serve MiB med/max", "RSS get MiB med/max"]
    rows = []
    for name, v in (("TLS", cost["tls"]), ("plaintext", cost["plaintext"])):
        rows.append([name, f"{v['mb_per_s_median']:.0f}", f"{v['mib_per_s_median']:.0f}",
                     f"{v['x_socat']:.2f}x", f"{v['x_socat_fsync']:.2f}x",
                     f"{v['cpu_get_s_per_gib_median']:.2f}", f"{v['cpu_serve_s_per_gib_median']:.2f}",
                     f"{v['cpu_total_s_per_gib_median']:.2f}",
                     f"{v['rss_serve_mib_median']:.1f}/{v['rss_serve_mib_max']:.1f}",
                     f"{v['rss_get_mib_median']:.1f}/{v['rss_get_mib_max']:.1f}"])
    t, p = cost["tls"], cost["plaintext"]
    rows.append(["TLS/plaintext", f"{cost['throughput_ratio_tls_over_plaintext']:.2f}x", "", "", "",
                 f"{t['cpu_get_s_per_gib_median'] / p['cpu_get_s_per_gib_median']:.2f}x",
                 f"{t['cpu_serve_s_per_gib_median'] / p['cpu_serve_s_per_gib_median']:.2f}x",
                 f"{cost['cpu_ratio_tls_over_plaintext']:.2f}x", "", ""])
    print_table(header, rows)
    print()
    print(f"TLS/plaintext throughput: {cost['throughput_ratio_tls_over_plaintext']:.2f}x (ratio of medians); "
          f"per round {cost['throughput_ratio_paired_median']:.2f}x median, "
          f"{cost['throughput_ratio_paired_min']:.2f}-{cost['throughput_ratio_paired_max']:.2f}x range.")
    print(f"TLS adds {cost['cpu_extra_s_per_gib']:+.2f} CPU s/GiB (get {cost['cpu_extra_get_s_per_gib']:+.2f}, "
          f"serve {cost['cpu_extra_serve_s_per_gib']:+.2f}; per round {cost['cpu_extra_s_per_gib_paired_median']:+.2f} "
          f"median). CPU columns are medians of each column, so get + serve need not equal total.")


def print_report(size: int, share_info: dict, summaries: dict[str, dict], targets: list[dict],
                 rss_floor: float, env: dict, cost: dict | None = None) -> None:
    ps = summaries["peershare"]
    print()
    print(f"File: {size / MIB:.0f} MiB ({size / MB:.1f} MB), loopback 127.0.0.1, "
          f"{ps['runs']} runs each after {env['warmup']} warm-up, alternating; medians unless noted.")
    print(f"Binary: {env['binary']} (built {env['binary_mtime']}).")
    print(f"Machine: {env['cpus']} CPUs; load average before {env['load_before']}, after {env['load_after']}; "
          f"work dir on {env['filesystem']}.")
    if cost is not None:
        print(f"Plaintext: {env['plaintext_binary']} (built {env['plaintext_binary_mtime']}), "
              f"{PLAINTEXT_ENV}=1.")
    if env.get("baseline_binary"):
        print(f"Baseline: {env['baseline_binary']} (built {env['baseline_binary_mtime']}).")
    print(f"Hashing (peershare share, once): {share_info['wall_s']:.2f} s = "
          f"{share_info['mb_per_s']:.0f} MB/s ({share_info['mib_per_s']:.0f} MiB/s), "
          f"CPU {share_info['cpu_s']:.2f} s, peak RSS {share_info['peak_rss_mib']:.1f} MiB")
    if cost is not None and env.get("plaintext_hashing"):
        h = env["plaintext_hashing"]
        print(f"Hashing ({PLAIN_TOOL} share, once, into its own data dir): {h['wall_s']:.2f} s = "
              f"{h['mb_per_s']:.0f} MB/s, CPU {h['cpu_s']:.2f} s")
    print()
    header = ["tool", "wall s", "min s", "max s", "MB/s", "MiB/s", "ps ratio",
              "CPU s/GiB", "RSS send MiB", "RSS recv MiB"]
    rows = []
    for tool, s in summaries.items():
        ratio = ps["mb_per_s_median"] / s["mb_per_s_median"]
        rows.append([tool, f"{s['wall_s_median']:.3f}", f"{s['wall_s_min']:.3f}", f"{s['wall_s_max']:.3f}",
                     f"{s['mb_per_s_median']:.0f}", f"{s['mib_per_s_median']:.0f}", f"{ratio:.2f}x",
                     f"{s['cpu_s_per_gib_median']:.2f}", f"{s['rss_sender_mib_median']:.1f}",
                     f"{s['rss_receiver_mib_median']:.1f}"])
    print_table(header, rows)
    print()
    print("ps ratio = peershare MB/s / this row's MB/s. peershare: sender = serve, receiver = get.")
    if cost is not None:
        print(f"{TLS_TOOL} = TLS 1.3 (release build); {PLAIN_TOOL} = the same code without TLS "
              f"(its ps ratio is TLS/plaintext).")
    print("CPU = user+sys of both processes (os.wait4 rusage); RSS = ru_maxrss per process "
          f"(measurement floor {rss_floor:.1f} MiB).")
    print("socat+fsync = the same socat transfers plus an fsync of the output (peershare fsyncs its output).")
    print()
    if cost is not None:
        print_tls_cost(cost, env)
        print()
    print("Targets (peershare with TLS):")
    for t in targets:
        print(f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['name']}: {t['value']}")


def evaluate_targets(summaries: dict[str, dict]) -> list[dict]:
    ps, so, sf = summaries["peershare"], summaries["socat"], summaries["socat+fsync"]
    ratio = ps["mb_per_s_median"] / so["mb_per_s_median"]
    ratio_sync = ps["mb_per_s_median"] / sf["mb_per_s_median"]
    worst_rss = max(ps["rss_sender_mib_max"], ps["rss_receiver_mib_max"])
    return [
        {"name": f"throughput >= {TARGET_MBPS:.0f} MB/s",
         "value": f"{ps['mb_per_s_median']:.0f} MB/s", "pass": ps["mb_per_s_median"] >= TARGET_MBPS},
        {"name": f"throughput >= {TARGET_SOCAT_RATIO}x socat",
         "value": f"{ratio:.2f}x socat ({ratio_sync:.2f}x socat+fsync)", "pass": ratio >= TARGET_SOCAT_RATIO},
        {"name": f"CPU <= {TARGET_CPU_PER_GIB:.0f} s per GiB (both processes)",
         "value": f"{ps['cpu_s_per_gib_median']:.2f} s/GiB "
                  f"(serve {ps['cpu_sender_s_median']:.2f} s + get {ps['cpu_receiver_s_median']:.2f} s per run)",
         "pass": ps["cpu_s_per_gib_median"] <= TARGET_CPU_PER_GIB},
        {"name": f"peak RSS < {TARGET_RSS_MIB:.0f} MiB for each process (worst run)",
         "value": f"serve {ps['rss_sender_mib_max']:.1f} MiB, get {ps['rss_receiver_mib_max']:.1f} MiB",
         "pass": worst_rss < TARGET_RSS_MIB},
    ]


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description="Loopback throughput benchmark: peershare vs socat.")
    ap.add_argument("--size-mib", type=int, default=1024, help="test file size in MiB (default 1024)")
    ap.add_argument("--runs", type=int, default=5, help="runs per tool (default 5)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="unrecorded runs of each tool first (default 1; the first transfers after "
                         "creating the file are often much slower)")
    ap.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                    help=f"where the test file (cached) and outputs go (default {DEFAULT_WORK_DIR})")
    ap.add_argument("--binary", type=Path, default=DEFAULT_BINARY,
                    help="peershare binary (default target/release/peershare)")
    ap.add_argument("--plaintext-binary", type=Path, nargs="?", const=DEFAULT_PLAINTEXT_BINARY, default=None,
                    metavar="PATH",
                    help="also measure this build of peershare with --features insecure-plaintext, run with "
                         f"{PLAINTEXT_ENV}=1, interleaved with the others, to report what TLS costs "
                         "(PATH defaults to target/plaintext/release/peershare; build it with "
                         f"`{PLAINTEXT_BUILD}`)")
    ap.add_argument("--baseline-binary", type=Path, default=None, metavar="PATH",
                    help="also measure this other (TLS) build of peershare, interleaved with the "
                         "others, e.g. one built from the previous commit into its own target dir: "
                         "an A/B in one invocation (its ps ratio is this build / the baseline)")
    ap.add_argument("--verify", choices=["all", "first"], default="all",
                    help="SHA-256 check of every output (all, default) or only the first of each "
                         "tool (first; later runs check the size only)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()
    if args.size_mib < 1 or args.runs < 1 or args.warmup < 0:
        die("--size-mib and --runs must be at least 1, --warmup at least 0", 2)

    binary = args.binary.resolve()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        die(f"{binary} not found: run `cargo build --release` first")
    plain_binary = None
    if args.plaintext_binary is not None:
        plain_binary = args.plaintext_binary.resolve()
        if not (plain_binary.is_file() and os.access(plain_binary, os.X_OK)):
            die(f"{plain_binary} not found: run `{PLAINTEXT_BUILD}` first")
        if plain_binary == binary:
            die("--plaintext-binary must be a separate build (with --features insecure-plaintext)", 2)
        skew = plain_binary.stat().st_mtime - binary.stat().st_mtime
        if abs(skew) > 600:
            log(f"warning: the plaintext binary was built {abs(skew) / 60:.0f} min "
                f"{'after' if skew > 0 else 'before'} {binary.name}: are both built from the same source?")
    base_binary = None
    if args.baseline_binary is not None:
        base_binary = args.baseline_binary.resolve()
        if not (base_binary.is_file() and os.access(base_binary, os.X_OK)):
            die(f"{base_binary} not found")
        if base_binary == binary:
            die("--baseline-binary must be another build than --binary", 2)
    if shutil.which("socat") is None:
        die("socat is not installed: run `apt-get install socat` (or your system's equivalent)")
    if sys.platform != "linux":
        log("warning: written for Linux (/proc/net/tcp, ru_maxrss in KiB)")

    if not enable_subreaper():
        log("warning: cannot become a child subreaper (prctl): peak RSS values are floored at this "
            "Python process's own peak RSS")
    floor = rusage_floor()

    work = args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    size = args.size_mib * MIB
    need = 3 * size + 64 * MIB
    free = shutil.disk_usage(work).free
    src_exists = (work / f"random-{args.size_mib}MiB.bin").exists()
    if free + (size if src_exists else 0) < need:
        die(f"{work} needs about {need / GIB:.1f} GiB free (source + two outputs), has {free / GIB:.1f} GiB")

    logs = work / "logs"
    out_ps = work / "out-peershare.bin"  # both peershare variants (one at a time)
    out_socat = work / "out-socat.bin"
    variants = [Variant(TLS_TOOL, binary, False, work / "serve-data", work / "get-data")]
    if plain_binary is not None:
        variants.append(Variant(PLAIN_TOOL, plain_binary, True, work / "serve-data-plaintext",
                                work / "get-data-plaintext"))
    if base_binary is not None:
        variants.append(Variant(BASE_TOOL, base_binary, False, work / "serve-data-baseline",
                                work / "get-data-baseline"))
    for v in variants:
        if v.get_dir.exists():
            shutil.rmtree(v.get_dir)
        v.get_dir.mkdir()
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir()

    load_before = loadavg()

    def mtime(path: Path) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(path.stat().st_mtime))

    src, sha = ensure_source(work, args.size_mib)
    read_through(src)  # page cache warm for hashing and every transfer alike

    share_infos = {}
    for v in variants:
        log(f"hashing: {v.tool} share {src.name} ...")
        v.file_id, share_infos[v.tool] = share(v.binary, v.serve_dir, src, size, v.env)
        log(f"  {share_infos[v.tool]['wall_s']:.2f} s, {share_infos[v.tool]['mb_per_s']:.0f} MB/s; id {v.file_id}")
    if len({v.file_id for v in variants}) != 1:
        raise BenchError(f"the variants give the file different IDs: {[v.file_id for v in variants]}")
    share_info = share_infos[TLS_TOOL]

    by_tool = {v.tool: v for v in variants}
    tools = [v.tool for v in variants] + ["socat"]
    results: dict[str, list[Run]] = {tool: [] for tool in tools}
    results["socat+fsync"] = []
    pairs: list[tuple[Run, Run]] = []  # (TLS, plaintext) of each recorded round
    warmups: list[dict] = []
    total = args.warmup + args.runs
    for k in range(total):
        warm = k < args.warmup
        i = k - args.warmup  # recorded run index; alternation continues through warm-ups
        label = f"warm-up {k + 1}/{args.warmup}" if warm else f"run {i + 1}/{args.runs}"
        full = args.verify == "all" or k == 0
        # A B C, then C B A, ...: with two tools ABBA; every tool's mean
        # position over two rounds is the same, so drift hits all alike.
        order = tools if k % 2 == 0 else tools[::-1]
        round_runs: dict[str, Run] = {}
        for tool in order:
            if tool in by_tool:
                r = run_peershare(by_tool[tool], out_ps, logs, size, sha, full, k)
                log(f"{label} {tool + ':':20s} {r.wall:7.3f} s  {size / MB / r.wall:7.0f} MB/s  "
                    f"CPU {r.cpu_total:5.2f} s (serve {r.cpu_sender:5.2f} get {r.cpu_receiver:5.2f})  "
                    f"RSS serve {r.rss_sender_mib:6.1f} MiB get {r.rss_receiver_mib:6.1f} MiB"
                    f"  (get reports {r.extra.get('get_reported_seconds') or 0:.3f} s)")
                runs = [r]
            else:
                a, b = run_socat(src, out_socat, logs, size, sha, full, k)
                log(f"{label} {'socat:':20s} {a.wall:7.3f} s  {size / MB / a.wall:7.0f} MB/s  "
                    f"CPU {a.cpu_total:5.2f} s (send {a.cpu_sender:5.2f} recv {a.cpu_receiver:5.2f})  "
                    f"RSS send {a.rss_sender_mib:6.1f} MiB recv {a.rss_receiver_mib:6.1f} MiB"
                    f"  (+fsync {b.wall:.3f} s)")
                runs = [a, b]
            for r in runs:
                round_runs[r.tool] = r
                if warm:
                    warmups.append(dict(asdict(r), cpu_total=r.cpu_total, round=k))
                else:
                    results[r.tool].append(r)
        if not warm and PLAIN_TOOL in round_runs:
            pairs.append((round_runs[TLS_TOOL], round_runs[PLAIN_TOOL]))
    remove_output(out_ps)
    remove_output(out_socat)

    summaries = {tool: summarize(runs, size) for tool, runs in results.items()}
    targets = evaluate_targets(summaries)
    cost = tls_cost(summaries, pairs, size)
    env = {"cpus": os.cpu_count(), "load_before": load_before, "load_after": loadavg(),
           "filesystem": filesystem(work), "binary": str(binary), "binary_mtime": mtime(binary),
           "warmup": args.warmup}
    if plain_binary is not None:
        env.update(plaintext_binary=str(plain_binary), plaintext_binary_mtime=mtime(plain_binary),
                   plaintext_hashing=share_infos[PLAIN_TOOL])
    if base_binary is not None:
        env.update(baseline_binary=str(base_binary), baseline_binary_mtime=mtime(base_binary))
    print_report(size, share_info, summaries, targets, floor, env, cost)

    if args.json:
        doc = {
            "size_bytes": size,
            "runs": args.runs,
            "binary": str(binary),
            "plaintext_binary": str(plain_binary) if plain_binary else None,
            "rss_floor_mib": floor,
            "machine": env,
            "hashing": share_info,
            "summary": summaries,
            "tls_cost": cost,
            "targets": targets,
            "warmup": warmups,
            "raw": {tool: [dict(asdict(r), cpu_total=r.cpu_total) for r in runs] for tool, runs in results.items()},
        }
        print()
        print(json.dumps(doc, indent=2))
    return 0 if all(t["pass"] for t in targets) else 3


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: ABORTED: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        kill_children()
