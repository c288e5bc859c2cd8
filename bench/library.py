#!/usr/bin/env python3
"""A library that scales: `peershare share` of 10,000 and 100,000 small
files (1 byte to 4 KiB each), and 1,000 shares of one file each into a
library of 10,000, by a build of this tree (`--new`) against an older
build (`--old`: before the library moved from library.json to
library.db), measured in the same invocation, alternating (ABBA).

Reports, per case and binary, medians over `--runs` of wall time, CPU
seconds (user + system, the process's own rusage) and peak RSS, and the
ratios: new/old per case, and 100,000 files / 10,000 files per binary (a
store whose edit costs O(1) shares 10x the files in about 10x the time).
Targets: that scaling ratio of the new build at most SCALING_TARGET, and
a single share into a library of 10,000 no slower than the old build.

Usage (from the workspace root; the old build is any release binary, e.g.
of main's commit before library.db in a worktree of its own):

    git worktree add /tmp/libdb-base c0a7d08 && (cd /tmp/libdb-base && cargo build --release)
    cargo build --release && python3 bench/library.py --old /tmp/libdb-base/target/release/peershare --runs 3

Standard library only (Python 3.11+), Linux only. Process handling (exact
per-process rusage) is shared with bench/run.py. The trees are made once in
the work dir (seeded, so every invocation shares the same bytes) and read
once before any measurement, so every run reads them from the page cache.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as common  # noqa: E402
from run import BenchError, log, tail  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_NEW = REPO_ROOT / "target" / "release" / "peershare"
DEFAULT_OLD = Path("/tmp/libdb-base/target/release/peershare")
DEFAULT_WORK = Path("/tmp/peershare-bench-library")
# Files per folder of a generated tree.
PER_FOLDER = 1000
# Largest generated file, bytes.
MAX_FILE = 4096
SCALING_TARGET = 11.0
RUN_TIMEOUT = 1800.0


def make_tree(root: Path, n: int, seed: int) -> Path:
    """`n` files of 1 byte to MAX_FILE bytes under `root`, PER_FOLDER per
    folder; made once (a marker says it is whole)."""
    done = root / ".complete"
    if done.exists():
        return root / "tree"
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    tree = root / "tree"
    for i in range(n):
        d = tree / f"d{i // PER_FOLDER:04}"
        if i % PER_FOLDER == 0:
            d.mkdir(parents=True)
        (d / f"f{i:06}.bin").write_bytes(rng.randbytes(rng.randint(1, MAX_FILE)))
    done.write_text(f"{n}\n")
    return tree


def read_through(tree: Path) -> None:
    for dirpath, _, files in os.walk(tree):
        for f in files:
            Path(dirpath, f).read_bytes()


def run_one(binary: Path, data_dir: Path, args: list, logs: Path, tag: str) -> tuple[float, float, float]:
    """One `peershare --data-dir DATA_DIR -q ARGS...`: (wall s, CPU s, peak RSS MiB)."""
    out_path, err_path = logs / f"{tag}.out", logs / f"{tag}.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        p = common.spawn([binary, "--data-dir", data_dir, "-q", *args], out, err)
        t0 = time.perf_counter()
        p.go()
        code, cpu, rss = common.reap(p, RUN_TIMEOUT)
        wall = time.perf_counter() - t0
    if code != 0:
        raise BenchError(f"{tag}: exit {code}: {tail(err_path)}")
    return wall, cpu, rss


def share_tree(binary: Path, work: Path, tree: Path, n: int, logs: Path, tag: str) -> dict:
    """`share --json TREE` on a fresh data dir, checked to share `n` files."""
    data = work / "data"
    if data.exists():
        shutil.rmtree(data)
    common.settle()
    wall, cpu, rss = run_one(binary, data, ["share", "--json", tree], logs, tag)
    shared = json.loads((logs / f"{tag}.out").read_text())
    files = [e for e in shared if e.get("kind", "file") == "file"]
    if len(files) != n:
        raise BenchError(f"{tag}: shared {len(files)} files, expected {n}")
    shutil.rmtree(data)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss}


def singles(binary: Path, work: Path, base_tree: Path, ones: list[Path], logs: Path, tag: str) -> dict:
    """A library of the base tree (untimed), then one `share FILE` process
    per file of `ones`, in turn: their total wall and CPU time, largest RSS."""
    data = work / "data"
    if data.exists():
        shutil.rmtree(data)
    run_one(binary, data, ["share", base_tree], logs, f"{tag}-base")
    common.settle()
    wall = cpu = rss = 0.0
    for i, f in enumerate(ones):
        w, c, r = run_one(binary, data, ["share", f], logs, f"{tag}-one")
        wall, cpu, rss = wall + w, cpu + c, max(rss, r)
    shutil.rmtree(data)
    return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mib": rss, "ms_per_share": wall / len(ones) * 1000}


def median_of(runs: list[dict]) -> dict:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=Path, default=DEFAULT_NEW, help="build with library.db")
    ap.add_argument("--old", type=Path, default=DEFAULT_OLD, help="build with library.json")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="10000,100000", help="tree sizes (files), comma-separated")
    ap.add_argument("--base", type=int, default=10_000, help="library size for the single shares")
    ap.add_argument("--singles", type=int, default=1000, help="single-file shares into it (0: none)")
    ap.add_argument("--work-dir", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--json", action="store_true", help="also print every result as JSON")
    a = ap.parse_args()
    for b in (a.new, a.old):
        if not b.exists():
            common.die(f"{b} is missing: build it first (see --help)")
    common.enable_subreaper()
    work = a.work_dir
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in a.sizes.split(",")]
    trees = {n: make_tree(work / f"tree-{n}", n, n) for n in sorted(set(sizes + [a.base]))}
    ones_root = work / f"ones-{a.singles}"
    ones = []
    if a.singles:
        make_tree(ones_root, a.singles, 1)
        ones = sorted((ones_root / "tree").rglob("*.bin"))
        read_through(ones_root)
    for t in trees.values():
        read_through(t)
    binaries = {"old": a.old, "new": a.new}
    results: dict = {"share": {}, "singles": {}}
    for n in sizes:
        runs: dict = {"old": [], "new": []}
        for i in range(a.runs):
            order = ["old", "new"] if i % 2 == 0 else ["new", "old"]
            for which in order:
                r = share_tree(binaries[which], work, trees[n], n, logs, f"share-{n}-{which}")
                log(f"share {n:>7} files  {which}  run {i + 1}: {r['wall_s']:7.2f} s wall, "
                    f"{r['cpu_s']:7.2f} s CPU, {r['peak_rss_mib']:6.1f} MiB")
                runs[which].append(r)
        results["share"][n] = {w: {"median": median_of(runs[w]), "runs": runs[w]} for w in runs}
    runs = {"old": [], "new": []}
    for i in range(a.runs if ones else 0):
        order = ["old", "new"] if i % 2 == 0 else ["new", "old"]
        for which in order:
            r = singles(binaries[which], work, trees[a.base], ones, logs, f"singles-{which}")
            log(f"{a.singles} single shares into {a.base}  {which}  run {i + 1}: {r['wall_s']:7.2f} s wall "
                f"({r['ms_per_share']:.1f} ms each), {r['cpu_s']:7.2f} s CPU, {r['peak_rss_mib']:6.1f} MiB")
            runs[which].append(r)
    if ones:
        results["singles"] = {w: {"median": median_of(runs[w]), "runs": runs[w]} for w in runs}

    print()
    print(f"medians of {a.runs} runs (wall s / CPU s / peak RSS MiB); ratio new/old of wall time")
    for n in sizes:
        m = {w: results["share"][n][w]["median"] for w in binaries}
        print(f"  share {n:>7} files     old {m['old']['wall_s']:7.2f} / {m['old']['cpu_s']:7.2f} / "
              f"{m['old']['peak_rss_mib']:6.1f}   new {m['new']['wall_s']:7.2f} / {m['new']['cpu_s']:7.2f} / "
              f"{m['new']['peak_rss_mib']:6.1f}   {m['new']['wall_s'] / m['old']['wall_s']:.2f}x")
    m = {w: results["singles"][w]["median"] for w in binaries} if ones else None
    if m:
        print(f"  {a.singles} shares into {a.base}  old {m['old']['wall_s']:7.2f} / {m['old']['cpu_s']:7.2f} / "
              f"{m['old']['peak_rss_mib']:6.1f}   new {m['new']['wall_s']:7.2f} / {m['new']['cpu_s']:7.2f} / "
              f"{m['new']['peak_rss_mib']:6.1f}   {m['new']['wall_s'] / m['old']['wall_s']:.2f}x "
              f"({m['old']['ms_per_share']:.1f} -> {m['new']['ms_per_share']:.1f} ms per share)")
    ok = True
    if len(sizes) >= 2:
        lo, hi = min(sizes), max(sizes)
        for w in binaries:
            s = results["share"]
            ratio = s[hi][w]["median"]["wall_s"] / s[lo][w]["median"]["wall_s"]
            cpu = s[hi][w]["median"]["cpu_s"] / s[lo][w]["median"]["cpu_s"]
            results.setdefault("scaling", {})[w] = {"wall": ratio, "cpu": cpu}
            print(f"  scaling {hi}/{lo} files  {w}: {ratio:.1f}x wall, {cpu:.1f}x CPU "
                  f"(linear: {hi / lo:.0f}x)")
        if results["scaling"]["new"]["wall"] > SCALING_TARGET:
            print(f"  TARGET MISSED: new scaling above {SCALING_TARGET}x")
            ok = False
    if m and m["new"]["wall_s"] > m["old"]["wall_s"]:
        print("  TARGET MISSED: single shares slower than the old build")
        ok = False
    if a.json:
        print(json.dumps(results, indent=2))
    return 0 if ok else 3


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as e:
        common.die(str(e))
