#!/usr/bin/env python3
"""Folder benchmark (issue 12): `peershare get` of a whole folder over
loopback, against `tar | socat` and `rsync -a` from an rsync daemon on the
same machine, in the same invocation, interleaved.

Two generated trees (made once, kept in the work dir with a manifest of
every file's size and SHA-256): "small", 10,000 files of 1 to 64 KiB
(about 333 MB) in about 100 nested directories, with a few empty
directories and some files of identical content; "large", 100 files of
10 MB. For each tree:

- tar|socat: `tar -C SRC -cf - . | socat -u -b 1048576 - TCP:127.0.0.1:PORT` into
  `socat -u -b 1048576 TCP-LISTEN:PORT,bind=127.0.0.1,reuseaddr - | tar -C DST -xf -`
  (the baseline); tar|socat+sync: the same transfers plus a syncfs of the
  output's file system (peershare syncs before it renames the tree in place);
- rsync: `rsync -a rsync://127.0.0.1:PORT/mod/ DST/` from one
  `rsync --daemon --no-detach` per tree, bound to 127.0.0.1;
- peershare: `share --json TREE` once on a fresh data dir (timed), one
  `serve --listen 127.0.0.1:0 --no-discovery --no-api` per tree, and per run
  a fresh client data dir and `get FOLDER-ID --peer 127.0.0.1:PORT
  --no-discovery -o OUT --json` (which shares the finished folder into the
  client's library), and the same with `--no-share`.

Every output tree is checked against the manifest (every path, file size
and SHA-256, empty directories, nothing else) after every run; a mismatch
aborts (status 1).

Usage (from the workspace root):

    cargo build --release -p peershare-cli && python3 bench/folders.py [--trees small,large] [--runs 3] [--json]

Exit status: 0 when every target is met, 3 when one is missed, 1 when the
benchmark aborted (a process failed, or an output differs from its source).
Needs tar, socat, rsync and bash (`apt-get install socat rsync`).

Standard library only (Python 3.11+), Linux only. Process handling (exact
per-process rusage: CPU seconds and peak RSS) is shared with bench/run.py.
See bench/README.md, "Folder benchmark".
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as common  # noqa: E402
from run import BenchError, MB, MIB, GIB, log, tail  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BINARY = REPO_ROOT / "target" / "release" / "peershare"
DEFAULT_WORK_DIR = Path("/tmp/peershare-bench-folders")

START_TIMEOUT = 30.0
LISTEN_TIMEOUT = 10.0
RUN_TIMEOUT = 900.0  # per transfer
SHARE_TIMEOUT = 900.0

# The trees. Changing a spec (or TREE_FORMAT) makes the next invocation
# generate that tree again; otherwise it is reused.
TREE_FORMAT = 1
TREES = {
    "small": {"files": 10_000, "min_size": 1024, "max_size": 64 * 1024, "dirs": 100, "max_depth": 5,
              "empty_dirs": 5, "duplicates": 100},
    "large": {"files": 100, "min_size": 10 * MB, "max_size": 10 * MB, "dirs": 0, "max_depth": 0,
              "empty_dirs": 0, "duplicates": 0},
}

# Targets (proposed in the brief): peershare's folder get (the default
# `get`, which shares the result) within this many times tar|socat's median
# wall time.
TARGET_RATIO = {"small": 3.0, "large": 2.0}
# Issue 12's own benchmark targets, reported but not in the exit status:
# the small tree at least 0.5x tar|socat's speed and faster than rsync;
# sharing it in under 3 s.
ISSUE_SOCAT_SPEED = 0.5
ISSUE_SHARE_S = 3.0

BASE = "tar|socat"
BASE_SYNC = "tar|socat+sync"
RSYNC = "rsync"
PS = "peershare"
PS_NOSHARE = "peershare --no-share"
TOOLS = [BASE, RSYNC, PS, PS_NOSHARE]  # run order of even rounds (odd: reversed)
ROWS = [BASE, BASE_SYNC, RSYNC, PS, PS_NOSHARE]  # report order

# Pipelines run by bash (one measured process each: wait4 of bash gives the
# rusage of tar and socat too, its waited-for children).
TAR_SEND = 'set -o pipefail; tar -C "$1" -cf - . | socat -u -b 1048576 - "TCP:127.0.0.1:$2"'
TAR_RECV = 'set -o pipefail; socat -u -b 1048576 "TCP-LISTEN:$1,bind=127.0.0.1,reuseaddr" - | tar -C "$2" -xf -'

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# Trees


def walk(root: Path) -> tuple[dict[str, int], set[str], list[str]]:
    """Every regular file (relative path: size), every directory below
    `root`, and anything else found (symbolic links, devices...)."""
    files: dict[str, int] = {}
    dirs: set[str] = set()
    other: list[str] = []
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                if e.is_dir(follow_symlinks=False):
                    dirs.add(r)
                    stack.append((r, Path(e.path)))
                elif e.is_file(follow_symlinks=False):
                    files[r] = e.stat(follow_symlinks=False).st_size
                else:
                    other.append(r)
    return files, dirs, other


def mtimes(root: Path, files) -> dict[str, int]:
    return {r: (root / r).stat().st_mtime_ns for r in files}


def generate_tree(root: Path, name: str, spec: dict) -> dict:
    """Writes tree `name` from a PRNG seeded by its name (so every machine
    gets the same bytes) and returns its manifest."""
    rng = random.Random(f"peershare bench/folders.py tree {name} v{TREE_FORMAT}")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # Directories: each under a random earlier one (or the top), at most
    # max_depth deep.
    dirs = [""]
    depth = {"": 0}
    for i in range(spec["dirs"]):
        parent = rng.choice([d for d in dirs if depth[d] < spec["max_depth"]])
        d = f"{parent}/d{i:03d}" if parent else f"d{i:03d}"
        dirs.append(d)
        depth[d] = depth[parent] + 1
    empty = []
    for j in range(spec["empty_dirs"]):
        parent = rng.choice(dirs)
        e = f"{parent}/empty{j}" if parent else f"empty{j}"
        if j == 0 and spec["empty_dirs"] > 1:
            e += "/inner/innermost"  # a chain of directories with nothing but one empty one at the end
        empty.append(e)
    for d in dirs[1:] + empty:
        (tmp / d).mkdir(parents=True, exist_ok=True)
    files: dict[str, list] = {}
    contents: list[str] = []  # paths with distinct content, to copy from
    n_dup = spec["duplicates"]
    dup_at = set(rng.sample(range(1, spec["files"]), n_dup)) if n_dup else set()
    for i in range(spec["files"]):
        d = rng.choice(dirs)
        rel = f"{d}/f{i:05d}.bin" if d else f"f{i:05d}.bin"
        if i in dup_at:
            orig = rng.choice(contents)
            data = (tmp / orig).read_bytes()
        else:
            data = rng.randbytes(rng.randint(spec["min_size"], spec["max_size"]))
            contents.append(rel)
        (tmp / rel).write_bytes(data)
        files[rel] = [len(data), hashlib.sha256(data).hexdigest()]
    os.sync()
    shutil.rmtree(root, ignore_errors=True)
    os.replace(tmp, root)
    all_dirs = set()
    for d in dirs[1:] + empty:
        parts = d.split("/")
        for k in range(1, len(parts) + 1):
            all_dirs.add("/".join(parts[:k]))
    return {
        "format": TREE_FORMAT,
        "name": name,
        "spec": spec,
        "files": files,
        "dirs": sorted(all_dirs),
        "empty_dirs": sorted(e for e in all_dirs if not any(f.startswith(e + "/") for f in files)
                             and not any(o.startswith(e + "/") for o in all_dirs)),
        "bytes": sum(s for s, _ in files.values()),
        "duplicate_files": n_dup,
        "distinct_contents": len({h for _, h in files.values()}),
        "mtime_ns": mtimes(root, files),
    }


def ensure_tree(trees: Path, name: str) -> tuple[Path, dict]:
    """Tree `name` and its manifest: the kept one when it still matches
    (same spec, same paths, sizes and mtimes), else generated anew."""
    spec = TREES[name]
    root = trees / name
    meta = trees / f"{name}.manifest.json"
    if root.is_dir() and meta.exists():
        try:
            m = json.loads(meta.read_text())
            if m["format"] == TREE_FORMAT and m["spec"] == spec:
                files, dirs, other = walk(root)
                if (not other and dirs == set(m["dirs"]) and files == {r: s for r, (s, _) in m["files"].items()}
                        and mtimes(root, files) == m["mtime_ns"]):
                    return root, m
        except (ValueError, KeyError, TypeError, OSError):
            pass
        log(f"tree {name}: {root} does not match its manifest, generating it again")
    log(f"generating tree {name} in {root} ({spec['files']} files) ...")
    t0 = time.perf_counter()
    m = generate_tree(root, name, spec)
    tmp = meta.with_suffix(".tmp")
    tmp.write_text(json.dumps(m))
    os.replace(tmp, meta)
    log(f"  done in {time.perf_counter() - t0:.1f} s: {len(m['files'])} files, {m['bytes'] / MB:.1f} MB, "
        f"{len(m['dirs'])} directories ({len(m['empty_dirs'])} empty)")
    return root, m


def read_through(root: Path, manifest: dict) -> None:
    """Reads every file once so every measurement reads the tree from the page cache."""
    for rel in manifest["files"]:
        with open(root / rel, "rb") as f:
            while f.read(4 * MIB):
                pass


def verify_tree(out: Path, manifest: dict, what: str) -> None:
    """Every path, size and SHA-256 of the manifest, its directories, and nothing else."""
    if not out.is_dir():
        raise BenchError(f"{what}: output {out} does not exist or is not a directory")
    files, dirs, other = walk(out)
    want = {r: s for r, (s, _) in manifest["files"].items()}
    if other:
        raise BenchError(f"{what}: {out} holds {len(other)} entries that are not files or directories, "
                         f"e.g. {other[:3]}")
    if dirs != set(manifest["dirs"]):
        missing, extra = sorted(set(manifest["dirs"]) - dirs), sorted(dirs - set(manifest["dirs"]))
        raise BenchError(f"{what}: {out}: directories differ: {len(missing)} missing {missing[:3]}, "
                         f"{len(extra)} unexpected {extra[:3]}")
    if files.keys() != want.keys():
        missing, extra = sorted(want.keys() - files.keys()), sorted(files.keys() - want.keys())
        raise BenchError(f"{what}: {out}: files differ: {len(missing)} missing {missing[:3]}, "
                         f"{len(extra)} unexpected {extra[:3]}")
    for rel, size in want.items():
        if files[rel] != size:
            raise BenchError(f"{what}: {out / rel} has {files[rel]} bytes, expected {size}")
    for rel, (_, sha) in manifest["files"].items():
        with open(out / rel, "rb") as f:
            got = hashlib.file_digest(f, "sha256").hexdigest()
        if got != sha:
            raise BenchError(f"{what}: {out / rel} SHA-256 {got} != source {sha}")


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def only_tree(parent: Path, what: str) -> None:
    """Nothing but `tree` is left beside the output (no part folder, no state)."""
    extra = sorted(p.name for p in parent.iterdir() if p.name != "tree")
    if extra:
        raise BenchError(f"{what}: left {extra} beside the output tree in {parent}")


# --------------------------------------------------------------------------
# Processes


def proc_cpu(pid: int) -> float:
    """CPU seconds so far of a running process: utime + stime + cutime +
    cstime (its own and its reaped children's), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / CLK_TCK


def proc_hwm_mib(pid: int) -> float | None:
    """Peak RSS so far (VmHWM) of a running process, in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def children_of(pid: int) -> list[int]:
    """Processes whose parent is `pid` (zombies included: not yet reaped)."""
    out = []
    for task in os.listdir("/proc"):
        if not task.isdigit():
            continue
        try:
            with open(f"/proc/{task}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(task))
        except (OSError, IndexError, ValueError):
            pass
    return out


def wait_no_children(pid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while children_of(pid):
        if time.monotonic() > deadline:
            raise BenchError(f"process {pid} still has children {timeout:.0f} s after the transfer")
        time.sleep(0.01)


_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(path: Path) -> None:
    """syncfs(2) of the file system holding `path`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")
    finally:
        os.close(fd)


def wait_listening(child: common.Child, port: int, err: Path, what: str) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while not common.is_listening(port):
        if common.exited(child):
            raise BenchError(f"{what} exited ({child.returncode}) before listening on {port}: {tail(err)} "
                             f"(log {err})")
        if time.monotonic() > deadline:
            raise BenchError(f"{what} not listening on {port} after {LISTEN_TIMEOUT:.0f} s (log {err})")
        time.sleep(0.005)


@dataclass
class Served:
    child: common.Child
    port: int
    log: Path


def start_serve(binary: Path, seed: Path, logs: Path, tree: str) -> Served:
    """`peershare serve --listen 127.0.0.1:0 --no-discovery --no-api`, ready
    once its first stdout line `listening on 127.0.0.1:PORT` is out (stdout
    goes to a file, so nothing it prints later can block it)."""
    out_path, err_path = logs / f"serve-{tree}.out", logs / f"serve-{tree}.err"
    argv = [binary, "--data-dir", seed, "serve", "--listen", "127.0.0.1:0", "--no-discovery", "--no-api"]
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        child = common.start(argv, out, err)
    deadline = time.monotonic() + START_TIMEOUT
    prefix = "listening on "
    while True:
        text = out_path.read_text(errors="replace")
        if "\n" in text:
            line = text.split("\n", 1)[0].strip()
            if not line.startswith(prefix):
                raise BenchError(f"unexpected first line from peershare serve: {line!r} (log {err_path})")
            return Served(child, int(line[len(prefix):].rsplit(":", 1)[1]), err_path)
        if common.exited(child):
            raise BenchError(f"peershare serve exited ({child.returncode}) before listening: "
                             f"{tail(err_path)} (log {err_path})")
        if time.monotonic() > deadline:
            raise BenchError(f"peershare serve printed no `listening on` line in {START_TIMEOUT:.0f} s "
                             f"(log {err_path})")
        time.sleep(0.01)


def start_rsyncd(work: Path, logs: Path, tree: str, src: Path) -> Served:
    """`rsync --daemon --no-detach` serving `src` as module `mod`, on 127.0.0.1 only."""
    port = common.free_port()
    conf = work / f"rsyncd-{tree}.conf"
    conf.write_text(
        f"address = 127.0.0.1\n"
        f"port = {port}\n"
        f"use chroot = false\n"
        f"reverse lookup = false\n"
        f"uid = {os.getuid()}\n"
        f"gid = {os.getgid()}\n"
        f"log file = {logs / f'rsyncd-{tree}.log'}\n"
        f"[mod]\n"
        f"    path = {src}\n"
        f"    read only = true\n")
    err = logs / f"rsyncd-{tree}.err"
    with open(err, "wb") as e:
        child = common.start(["rsync", "--daemon", "--no-detach", f"--config={conf}"], subprocess.DEVNULL, e)
    wait_listening(child, port, err, "rsync --daemon")
    return Served(child, port, err)


def stop(s: Served, what: str) -> tuple[int, float, float]:
    s.child.signal(signal.SIGTERM)
    code, cpu, rss = common.reap(s.child, 30.0)
    if code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM, 20):  # rsync exits 20 on SIGTERM
        log(f"warning: {what} exited with {code} after SIGTERM: {tail(s.log)}")
    return code, cpu, rss


# --------------------------------------------------------------------------
# Runs


@dataclass
class Run:
    tool: str
    tree: str
    round: int
    wall: float  # seconds
    cpu_sender: float  # CPU seconds (user+sys, children included)
    cpu_receiver: float
    rss_receiver_mib: float  # peak RSS of the receiving process (for peershare: the get)
    rss_sender_mib: float | None = None  # when known per run
    extra: dict = field(default_factory=dict)

    @property
    def cpu_total(self) -> float:
        return self.cpu_sender + self.cpu_receiver


@dataclass
class Tree:
    name: str
    src: Path
    manifest: dict
    out_parent: Path
    client: Path
    logs: Path
    binary: Path
    folder_id: str = ""
    serve: Served | None = None
    rsyncd: Served | None = None

    @property
    def out(self) -> Path:
        return self.out_parent / "tree"


def run_tar(t: Tree, k: int) -> list[Run]:
    """One tar|socat transfer; returns it and, the same transfer with a
    syncfs of the output's file system added, tar|socat+sync."""
    fresh_dir(t.out)
    common.settle()
    port = common.free_port()
    r_err, s_err = t.logs / f"{t.name}-tar-recv-{k}.err", t.logs / f"{t.name}-tar-send-{k}.err"
    with open(r_err, "wb") as re_, open(s_err, "wb") as se:
        recv = common.start(["bash", "-c", TAR_RECV, "bash", str(port), str(t.out)], subprocess.DEVNULL, re_)
        wait_listening(recv, port, r_err, "socat | tar receiver")
        send = common.spawn(["bash", "-c", TAR_SEND, "bash", str(t.src), str(port)], subprocess.DEVNULL, se)
        t0 = time.perf_counter()
        send.go()
        s_code, s_cpu, s_rss = common.reap(send, RUN_TIMEOUT)
        r_code, r_cpu, r_rss = common.reap(recv, RUN_TIMEOUT)
        wall = time.perf_counter() - t0
        syncfs(t.out)
        wall_sync = time.perf_counter() - t0
    if s_code != 0 or r_code != 0:
        raise BenchError(f"tar|socat failed (sender exit {s_code}, receiver exit {r_code}): "
                         f"{tail(s_err)} {tail(r_err)} (logs {s_err}, {r_err})")
    verify_tree(t.out, t.manifest, f"{t.name} {BASE}")
    only_tree(t.out_parent, BASE)
    shutil.rmtree(t.out)
    return [Run(BASE, t.name, k, wall, s_cpu, r_cpu, r_rss, s_rss),
            Run(BASE_SYNC, t.name, k, wall_sync, s_cpu, r_cpu, r_rss, s_rss,
                {"sync_s": wall_sync - wall})]


def run_rsync(t: Tree, k: int) -> list[Run]:
    """`rsync -a` from the tree's daemon; sender CPU = what the daemon (and
    its per-connection child, once reaped) used meanwhile."""
    assert t.rsyncd is not None
    shutil.rmtree(t.out, ignore_errors=True)
    common.settle()
    daemon = t.rsyncd.child.pid
    wait_no_children(daemon)
    before = proc_cpu(daemon)
    err = t.logs / f"{t.name}-rsync-{k}.err"
    with open(err, "wb") as e:
        c = common.spawn(["rsync", "-a", f"rsync://127.0.0.1:{t.rsyncd.port}/mod/", f"{t.out}/"],
                         subprocess.DEVNULL, e)
        t0 = time.perf_counter()
        c.go()
        code, cpu, rss = common.reap(c, RUN_TIMEOUT)
        wall = time.perf_counter() - t0
    if code != 0:
        raise BenchError(f"rsync failed (exit {code}): {tail(err)} (log {err}; daemon log "
                         f"{t.logs / f'rsyncd-{t.name}.log'})")
    wait_no_children(daemon)
    send_cpu = proc_cpu(daemon) - before
    verify_tree(t.out, t.manifest, f"{t.name} {RSYNC}")
    only_tree(t.out_parent, RSYNC)
    shutil.rmtree(t.out)
    return [Run(RSYNC, t.name, k, wall, send_cpu, cpu, rss)]


def run_peershare(t: Tree, k: int, share: bool) -> list[Run]:
    """One `get` of the folder into a fresh client data dir; sender CPU =
    what the (long-running) serve used meanwhile."""
    assert t.serve is not None
    tool = PS if share else PS_NOSHARE
    shutil.rmtree(t.out, ignore_errors=True)
    fresh_dir(t.client)
    common.settle()
    serve = t.serve.child.pid
    before = proc_cpu(serve)
    tag = "get" if share else "get-noshare"
    out_p, err_p = t.logs / f"{t.name}-{tag}-{k}.out", t.logs / f"{t.name}-{tag}-{k}.err"
    argv = [t.binary, "--data-dir", t.client, "-q", "get", t.folder_id, "--peer", f"127.0.0.1:{t.serve.port}",
            "--no-discovery", "-o", t.out, "--json"]
    if not share:
        argv.append("--no-share")
    with open(out_p, "wb") as o, open(err_p, "wb") as e:
        g = common.spawn(argv, o, e)
        t0 = time.perf_counter()
        g.go()
        code, cpu, rss = common.reap(g, RUN_TIMEOUT)
        wall = time.perf_counter() - t0
    if code != 0:
        raise BenchError(f"{t.name} {tool} get failed (exit {code}): {tail(err_p)} (stderr log {err_p}, "
                         f"serve log {t.serve.log}; command: {' '.join(map(str, argv))})")
    if common.exited(t.serve.child):
        raise BenchError(f"peershare serve exited ({t.serve.child.returncode}) during the get: "
                         f"{tail(t.serve.log)} (log {t.serve.log})")
    serve_cpu = proc_cpu(serve) - before
    extra: dict = {"serve_peak_rss_mib_so_far": proc_hwm_mib(serve), "stderr_log": str(err_p)}
    try:
        summary = json.loads(out_p.read_text())
        for key in ("files", "copies", "empty_dirs", "skipped", "size", "bytes_received", "bytes_resumed",
                    "seconds", "shared"):
            extra[key] = summary.get(key)
        extra["requests"] = sum(p.get("requests", 0) for p in summary.get("peers", []))
    except (ValueError, AttributeError) as e:
        raise BenchError(f"{t.name} {tool}: cannot parse `get --json` output ({e}): {tail(out_p)}")
    if extra.get("shared") is not None and bool(extra["shared"]) != share:
        log(f"warning: {t.name} {tool}: get --json says shared={extra['shared']}")
    verify_tree(t.out, t.manifest, f"{t.name} {tool}")
    only_tree(t.out_parent, tool)
    shutil.rmtree(t.out)
    shutil.rmtree(t.client)
    return [Run(tool, t.name, k, wall, serve_cpu, cpu, rss, None, extra)]


def share_tree(t: Tree, seed: Path) -> dict:
    """`peershare --data-dir SEED share --json TREE` on a fresh data dir
    (so it really hashes); timed. Sets t.folder_id."""
    fresh_dir(seed)
    common.settle()
    out_p, err_p = t.logs / f"share-{t.name}.out", t.logs / f"share-{t.name}.err"
    with open(out_p, "wb") as o, open(err_p, "wb") as e:
        p = common.spawn([t.binary, "--data-dir", seed, "share", "--json", t.src], o, e)
        t0 = time.perf_counter()
        p.go()
        code, cpu, rss = common.reap(p, SHARE_TIMEOUT)
        wall = time.perf_counter() - t0
    if code != 0:
        raise BenchError(f"peershare share failed (exit {code}): {tail(err_p)} (log {err_p})")
    try:
        entries = json.loads(out_p.read_text())
        folders = [x for x in entries if x.get("kind") == "folder"]
        if len(folders) != 1:
            raise ValueError(f"{len(folders)} folders")
        folder = folders[0]
        t.folder_id = folder["id"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise BenchError(f"cannot find the folder in `peershare share --json` output ({e}): {tail(out_p)}")
    n, size = len(t.manifest["files"]), t.manifest["bytes"]
    if folder.get("files") != n or folder.get("size") != size:
        raise BenchError(f"share: the folder has {folder.get('files')} files of {folder.get('size')} bytes, "
                         f"the tree {n} of {size}")
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss, "mb_per_s": size / MB / wall,
            "files_per_s": n / wall, "folder_id": t.folder_id, "files": n, "bytes": size}


# --------------------------------------------------------------------------
# Reporting


def summarize(runs: list[Run], n_files: int, size: int) -> dict:
    med = statistics.median
    walls = [r.wall for r in runs]
    s = {
        "runs": len(runs),
        "wall_s_median": med(walls),
        "wall_s_min": min(walls),
        "wall_s_max": max(walls),
        "files_per_s_median": med(n_files / w for w in walls),
        "mb_per_s_median": med(size / MB / w for w in walls),
        "cpu_s_median": med(r.cpu_total for r in runs),
        "cpu_sender_s_median": med(r.cpu_sender for r in runs),
        "cpu_receiver_s_median": med(r.cpu_receiver for r in runs),
        "rss_receiver_mib_median": med(r.rss_receiver_mib for r in runs),
        "rss_receiver_mib_max": max(r.rss_receiver_mib for r in runs),
    }
    senders = [r.rss_sender_mib for r in runs if r.rss_sender_mib is not None]
    if senders:
        s["rss_sender_mib_median"] = med(senders)
        s["rss_sender_mib_max"] = max(senders)
    reported = [r.extra["seconds"] for r in runs if r.extra.get("seconds") is not None]
    if reported:
        s["get_reported_seconds_median"] = med(reported)
    return s


def print_tree_report(name: str, m: dict, share: dict, summ: dict[str, dict], serve_end: dict) -> None:
    base = summ[BASE]["wall_s_median"]
    print()
    print(f"Tree {name}: {len(m['files'])} files ({m['distinct_contents']} distinct contents), "
          f"{m['bytes'] / MB:.1f} MB, {len(m['dirs'])} directories ({len(m['empty_dirs'])} empty).")
    print(f"  peershare share (once, fresh data dir): {share['wall_s']:.2f} s = {share['files_per_s']:.0f} files/s, "
          f"{share['mb_per_s']:.0f} MB/s; CPU {share['cpu_s']:.2f} s; peak RSS {share['peak_rss_mib']:.1f} MiB")
    header = ["tool", "wall s", "min s", "max s", "x tar|socat", "files/s", "MB/s", "CPU s", "send", "recv",
              "RSS recv MiB", "max"]
    rows = []
    for tool in ROWS:
        s = summ[tool]
        rows.append([tool, f"{s['wall_s_median']:.3f}", f"{s['wall_s_min']:.3f}", f"{s['wall_s_max']:.3f}",
                     f"{s['wall_s_median'] / base:.2f}x", f"{s['files_per_s_median']:.0f}",
                     f"{s['mb_per_s_median']:.0f}", f"{s['cpu_s_median']:.2f}", f"{s['cpu_sender_s_median']:.2f}",
                     f"{s['cpu_receiver_s_median']:.2f}", f"{s['rss_receiver_mib_median']:.1f}",
                     f"{s['rss_receiver_mib_max']:.1f}"])
    common.print_table(header, rows)
    ps = summ[PS]
    extra = []
    if "get_reported_seconds_median" in ps:
        extra.append(f"get --json `seconds` median {ps['get_reported_seconds_median']:.3f} s "
                     f"(--no-share {summ[PS_NOSHARE].get('get_reported_seconds_median', 0):.3f} s)")
    if serve_end:
        extra.append(f"serve: CPU {serve_end['cpu_s']:.2f} s over the whole invocation, peak RSS "
                     f"{serve_end['peak_rss_mib']:.1f} MiB")
    if extra:
        print("  " + "; ".join(extra))


def evaluate_targets(results: dict) -> tuple[list[dict], list[dict]]:
    targets, issue = [], []
    for name, r in results.items():
        summ = r["summary"]
        base = summ[BASE]["wall_s_median"]
        ps, ns = summ[PS]["wall_s_median"], summ[PS_NOSHARE]["wall_s_median"]
        limit = TARGET_RATIO[name]
        targets.append({"name": f"{name}: peershare folder get within {limit:.0f}x tar|socat wall time",
                        "value": f"{ps / base:.2f}x ({ps:.3f} s vs {base:.3f} s; --no-share {ns / base:.2f}x)",
                        "pass": ps / base <= limit})
        if name == "small":
            rs = summ[RSYNC]["wall_s_median"]
            issue.append({"name": f"small: at least {ISSUE_SOCAT_SPEED}x tar|socat's speed",
                          "value": f"{base / ps:.2f}x (--no-share {base / ns:.2f}x)",
                          "pass": base / ps >= ISSUE_SOCAT_SPEED})
            issue.append({"name": "small: faster than rsync",
                          "value": f"{ps:.3f} s vs rsync {rs:.3f} s (--no-share {ns:.3f} s)", "pass": ps < rs})
            issue.append({"name": f"small: share in under {ISSUE_SHARE_S:.0f} s",
                          "value": f"{r['share']['wall_s']:.2f} s", "pass": r["share"]["wall_s"] < ISSUE_SHARE_S})
    return targets, issue


# --------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", default="small,large", metavar="LIST",
                    help=f"comma-separated trees to measure, of {','.join(TREES)} (default small,large)")
    ap.add_argument("--runs", type=int, default=3, metavar="N", help="recorded runs per tool and tree (default 3)")
    ap.add_argument("--warmup", type=int, default=1, metavar="N",
                    help="unrecorded runs of each tool first, per tree (default 1)")
    ap.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR,
                    help=f"trees (kept between invocations), data dirs, outputs, logs (default {DEFAULT_WORK_DIR})")
    ap.add_argument("--binary", type=Path, default=DEFAULT_BINARY,
                    help="peershare binary (default target/release/peershare)")
    ap.add_argument("--json", action="store_true", help="also print all results (summary and every run) as JSON")
    args = ap.parse_args()
    names = [n.strip() for n in args.trees.split(",") if n.strip()]
    bad = [n for n in names if n not in TREES]
    if bad or not names or len(set(names)) != len(names):
        common.die(f"--trees: give one or more of {', '.join(TREES)}, each once (got {args.trees!r})", 2)
    if args.runs < 1 or args.warmup < 0:
        common.die("--runs must be at least 1, --warmup at least 0", 2)
    binary = args.binary.resolve()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        common.die(f"{binary} not found: run `cargo build --release -p peershare-cli` first")
    for tool in ("tar", "socat", "rsync", "bash"):
        if shutil.which(tool) is None:
            common.die(f"{tool} is not installed: run `apt-get install -y socat rsync` (or your system's equivalent)")
    if sys.platform != "linux":
        common.die("Linux only (/proc, os.wait4 rusage, syncfs)")
    if not common.enable_subreaper():
        log("warning: cannot become a child subreaper (prctl): peak RSS values are floored at this "
            "Python process's own peak RSS")
    floor = common.rusage_floor()

    work = args.work_dir.resolve()
    (work / "trees").mkdir(parents=True, exist_ok=True)
    logs = fresh_dir(work / "logs")
    need = sum(2 * TREES[n]["files"] * TREES[n]["max_size"] for n in names) + 256 * MIB
    free = shutil.disk_usage(work).free
    if free < need / 2:  # a kept tree needs no new room; an output needs about its size
        common.die(f"{work} needs about {need / GIB:.1f} GiB free (trees and one output), has {free / GIB:.1f} GiB")
    load_before = common.loadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())

    results: dict[str, dict] = {}
    manifests: dict[str, dict] = {}
    for name in names:
        src, manifest = ensure_tree(work / "trees", name)
        manifests[name] = manifest
        n_files, size = len(manifest["files"]), manifest["bytes"]
        t = Tree(name, src, manifest, fresh_dir(work / f"out-{name}"), work / f"client-{name}", logs, binary)
        read_through(src, manifest)
        log(f"{name}: peershare share ...")
        share = share_tree(t, work / f"seed-{name}")
        log(f"  {share['wall_s']:.2f} s, CPU {share['cpu_s']:.2f} s; folder {t.folder_id}")
        read_through(src, manifest)
        raw: dict[str, list[Run]] = {tool: [] for tool in ROWS}
        warmups: list[Run] = []
        serve_end: dict = {}
        t.serve = start_serve(binary, work / f"seed-{name}", logs, name)
        t.rsyncd = start_rsyncd(work, logs, name, src)
        try:
            for k in range(args.warmup + args.runs):
                warm = k < args.warmup
                label = f"warm-up {k + 1}/{args.warmup}" if warm else f"run {k - args.warmup + 1}/{args.runs}"
                order = TOOLS if k % 2 == 0 else TOOLS[::-1]
                for tool in order:
                    if tool == BASE:
                        runs = run_tar(t, k)
                    elif tool == RSYNC:
                        runs = run_rsync(t, k)
                    else:
                        runs = run_peershare(t, k, tool == PS)
                    for r in runs:
                        note = ""
                        if r.extra.get("seconds") is not None:
                            note = f"  (get reports {r.extra['seconds']:.3f} s)"
                        elif "sync_s" in r.extra:
                            note = f"  (syncfs {r.extra['sync_s']:.3f} s)"
                        log(f"{name} {label} {r.tool + ':':22s} {r.wall:8.3f} s  {n_files / r.wall:7.0f} files/s  "
                            f"{size / MB / r.wall:6.0f} MB/s  CPU {r.cpu_total:6.2f} s (send {r.cpu_sender:5.2f} "
                            f"recv {r.cpu_receiver:6.2f})  RSS recv {r.rss_receiver_mib:6.1f} MiB{note}")
                        (warmups if warm else raw[r.tool]).append(r)
        finally:
            if t.serve is not None and t.serve.child.returncode is None:
                code, cpu, rss = stop(t.serve, "peershare serve")
                serve_end = {"exit": code, "cpu_s": cpu, "peak_rss_mib": rss}
            if t.rsyncd is not None and t.rsyncd.child.returncode is None:
                stop(t.rsyncd, "rsync --daemon")
        shutil.rmtree(t.out_parent, ignore_errors=True)
        results[name] = {
            "tree": {k: manifest[k] for k in ("name", "spec", "bytes", "duplicate_files", "distinct_contents")}
            | {"path": str(src), "files": n_files, "dirs": len(manifest["dirs"]),
               "empty_dirs": len(manifest["empty_dirs"])},
            "share": share,
            "serve": serve_end,
            "summary": {tool: summarize(raw[tool], n_files, size) for tool in ROWS},
            "raw": {tool: [dict(asdict(r), cpu_total=r.cpu_total) for r in raw[tool]] for tool in ROWS},
            "warmup": [dict(asdict(r), cpu_total=r.cpu_total) for r in warmups],
        }

    targets, issue = evaluate_targets(results)
    env = {"started": started, "cpus": os.cpu_count(), "load_before": load_before, "load_after": common.loadavg(),
           "filesystem": common.filesystem(work), "binary": str(binary),
           "binary_mtime": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(binary.stat().st_mtime)),
           "runs": args.runs, "warmup": args.warmup, "rss_floor_mib": floor}
    print()
    print(f"Folders over loopback 127.0.0.1, {args.runs} runs of each tool per tree after {args.warmup} warm-up, "
          f"order alternating; medians unless noted. Started {started}.")
    print(f"Binary: {binary} (built {env['binary_mtime']}).")
    print(f"Machine: {env['cpus']} CPUs; load average before {load_before}, after {env['load_after']}; "
          f"work dir on {env['filesystem']}.")
    for name, r in results.items():
        print_tree_report(name, manifests[name], r["share"], r["summary"], r["serve"])
    print()
    print("x tar|socat = wall time / tar|socat's. CPU = user+sys of the measured processes, children included: "
          "tar|socat both bash pipelines (os.wait4);")
    print("rsync the client (os.wait4) + the daemon and its per-connection child (/proc, after reaping); "
          "peershare the get (os.wait4) + serve (/proc).")
    print(f"RSS recv = peak RSS of the receiving process (peershare: the get; measurement floor {floor:.1f} MiB). "
          "tar|socat+sync = tar|socat plus a syncfs of the output.")
    print()
    print("Targets:")
    for x in targets:
        print(f"  [{'PASS' if x['pass'] else 'FAIL'}] {x['name']}: {x['value']}")
    if issue:
        print("Issue 12's own targets (informational, not in the exit status):")
        for x in issue:
            print(f"  [{'PASS' if x['pass'] else 'FAIL'}] {x['name']}: {x['value']}")
    if args.json:
        print()
        print(json.dumps({"machine": env, "trees": results, "targets": targets, "issue_targets": issue}, indent=2))
    return 0 if all(x["pass"] for x in targets) else 3


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, common._on_signal)
    signal.signal(signal.SIGHUP, common._on_signal)
    try:
        sys.exit(main())
    except BenchError as e:
        print(f"bench: ABORTED: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        common.kill_children()
