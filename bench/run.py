#!/usr/bin/env python3
"""Loopback throughput benchmark: peershare vs socat.

Usage (from the workspace root):

    cargo build --release && python3 bench/run.py [--size-mib 1024] [--runs 5] [--json]

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


def spawn(argv: list, stdout, stderr) -> Child:
    """Prepares argv with stdin /dev/null and the given stdout/stderr (file
    objects, fds or subprocess.DEVNULL); it starts on Child.go(). See above
    for why through /bin/sh."""
    argv = [str(a) for a in argv]
    if not _subreaper:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr)
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
                              stdout=stdout, stderr=stderr, pass_fds=(go_r, pid_w))
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


def start(argv: list, stdout, stderr) -> Child:
    c = spawn(argv, stdout, stderr)
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
class Run:
    tool: str  # "peershare", "socat", "socat+fsync"
    wall: float  # seconds
    cpu_sender: float  # CPU seconds
    cpu_receiver: float
    rss_sender_mib: float
    rss_receiver_mib: float
    extra: dict = field(default_factory=dict)

    @property
    def cpu_total(self) -> float:
        return self.cpu_sender + self.cpu_receiver


def share(binary: Path, serve_dir: Path, src: Path, size: int) -> tuple[str, dict]:
    """`peershare share` on a fresh data dir (so it really hashes); timed."""
    if serve_dir.exists():
        shutil.rmtree(serve_dir)
    serve_dir.mkdir(parents=True)
    out_path = serve_dir.parent / "share.out"
    err_path = serve_dir.parent / "share.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = spawn([binary, "--data-dir", serve_dir, "-q", "share", "--json", src], out, err)
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


def start_server(binary: Path, serve_dir: Path, log_path: Path) -> tuple[Child, int, int]:
    """Starts `peershare serve` on a free loopback port; returns it, the port
    and the read end of its stdout (close it after the server exits)."""
    r, w = os.pipe()
    try:
        with open(log_path, "wb") as err:
            p = start([binary, "--data-dir", serve_dir, "serve", "--no-discovery", "--listen", "127.0.0.1:0"], w, err)
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


def run_peershare(binary: Path, serve_dir: Path, get_dir: Path, file_id: str, out: Path,
                  logs: Path, size: int, sha: str, full_verify: bool, index: int) -> Run:
    remove_output(out)
    settle()
    server, port, server_out = start_server(binary, serve_dir, logs / f"serve-{index}.err")
    try:
        get_out, get_err = logs / f"get-{index}.out", logs / f"get-{index}.err"
        with open(get_out, "wb") as o, open(get_err, "wb") as e:
            g = spawn([binary, "--data-dir", get_dir, "-q", "get", file_id,
                       "--peer", f"127.0.0.1:{port}", "-o", out, "--json"], o, e)
            t0 = time.perf_counter()
            g.go()
            g_code, g_cpu, g_rss = reap(g, RUN_TIMEOUT)
            wall = time.perf_counter() - t0
        if g_code != 0:
            raise BenchError(f"peershare get failed (exit {g_code}): {tail(get_err)}")
        server.signal(signal.SIGTERM)
        s_code, s_cpu, s_rss = reap(server, 30.0)
    finally:
        os.close(server_out)
    if s_code != 0:
        log(f"warning: peershare serve exited with {s_code} after SIGTERM: "
            f"{tail(logs / f'serve-{index}.err')}")
    verify(out, size, sha, "peershare", full_verify)
    extra = {"server_exit": s_code}
    try:
        summary = json.loads(get_out.read_text())
        extra["get_reported_seconds"] = summary.get("seconds")
        extra["bytes_received"] = summary.get("bytes_received")
    except ValueError:
        pass
    return Run("peershare", wall, s_cpu, g_cpu, s_rss, g_rss, extra)


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


def print_report(size: int, share_info: dict, summaries: dict[str, dict], targets: list[dict],
                 rss_floor: float, env: dict) -> None:
    ps = summaries["peershare"]
    print()
    print(f"File: {size / MIB:.0f} MiB ({size / MB:.1f} MB), loopback 127.0.0.1, "
          f"{ps['runs']} runs each after {env['warmup']} warm-up, alternating; medians unless noted.")
    print(f"Binary: {env['binary']} (built {env['binary_mtime']}).")
    print(f"Machine: {env['cpus']} CPUs; load average before {env['load_before']}, after {env['load_after']}; "
          f"work dir on {env['filesystem']}.")
    print(f"Hashing (peershare share, once): {share_info['wall_s']:.2f} s = "
          f"{share_info['mb_per_s']:.0f} MB/s ({share_info['mib_per_s']:.0f} MiB/s), "
          f"CPU {share_info['cpu_s']:.2f} s, peak RSS {share_info['peak_rss_mib']:.1f} MiB")
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
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    print(fmt(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(fmt(r))
    print()
    print("ps ratio = peershare MB/s / this row's MB/s. peershare: sender = serve, receiver = get.")
    print("CPU = user+sys of both processes (os.wait4 rusage); RSS = ru_maxrss per process "
          f"(measurement floor {rss_floor:.1f} MiB).")
    print("socat+fsync = the same socat transfers plus an fsync of the output (peershare fsyncs its output).")
    print()
    print("Targets:")
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

    serve_dir = work / "serve-data"
    get_dir = work / "get-data"
    logs = work / "logs"
    out_ps = work / "out-peershare.bin"
    out_socat = work / "out-socat.bin"
    if get_dir.exists():
        shutil.rmtree(get_dir)
    get_dir.mkdir()
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir()

    load_before = loadavg()
    binary_mtime = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(binary.stat().st_mtime))
    src, sha = ensure_source(work, args.size_mib)
    read_through(src)  # page cache warm for hashing and every transfer alike

    log(f"hashing: peershare share {src.name} ...")
    file_id, share_info = share(binary, serve_dir, src, size)
    log(f"  {share_info['wall_s']:.2f} s, {share_info['mb_per_s']:.0f} MB/s; id {file_id}")

    results: dict[str, list[Run]] = {"peershare": [], "socat": [], "socat+fsync": []}
    warmups: list[dict] = []
    total = args.warmup + args.runs
    for k in range(total):
        warm = k < args.warmup
        i = k - args.warmup  # recorded run index; alternation continues through warm-ups
        label = f"warm-up {k + 1}/{args.warmup}" if warm else f"run {i + 1}/{args.runs}"
        full = args.verify == "all" or k == 0
        order = ["peershare", "socat"] if k % 2 == 0 else ["socat", "peershare"]
        for tool in order:
            if tool == "peershare":
                r = run_peershare(binary, serve_dir, get_dir, file_id, out_ps, logs, size, sha, full, k)
                log(f"{label} peershare:   {r.wall:7.3f} s  {size / MB / r.wall:7.0f} MB/s  "
                    f"CPU {r.cpu_total:5.2f} s  RSS serve {r.rss_sender_mib:6.1f} MiB get {r.rss_receiver_mib:6.1f} MiB"
                    f"  (get reports {r.extra.get('get_reported_seconds') or 0:.3f} s)")
                runs = [r]
            else:
                a, b = run_socat(src, out_socat, logs, size, sha, full, k)
                log(f"{label} socat:       {a.wall:7.3f} s  {size / MB / a.wall:7.0f} MB/s  "
                    f"CPU {a.cpu_total:5.2f} s  RSS send {a.rss_sender_mib:6.1f} MiB recv {a.rss_receiver_mib:6.1f} MiB"
                    f"  (+fsync {b.wall:.3f} s)")
                runs = [a, b]
            for r in runs:
                if warm:
                    warmups.append(dict(asdict(r), cpu_total=r.cpu_total))
                else:
                    results[r.tool].append(r)
    remove_output(out_ps)
    remove_output(out_socat)

    summaries = {tool: summarize(runs, size) for tool, runs in results.items()}
    targets = evaluate_targets(summaries)
    env = {"cpus": os.cpu_count(), "load_before": load_before, "load_after": loadavg(),
           "filesystem": filesystem(work), "binary": str(binary), "binary_mtime": binary_mtime,
           "warmup": args.warmup}
    print_report(size, share_info, summaries, targets, floor, env)

    if args.json:
        doc = {
            "size_bytes": size,
            "runs": args.runs,
            "binary": str(binary),
            "rss_floor_mib": floor,
            "machine": env,
            "hashing": share_info,
            "summary": summaries,
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
