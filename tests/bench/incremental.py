#!/usr/bin/env python3
"""Benchmark: what format 2 makes cheap — a second backup after ~1% of the data
changed, one small file restored from a backup, `ls`, and a full restore — against
`tar | zstd -T0 -3`, `zstd -d | tar -x` and restic (Debian's `restic`, when on PATH),
all measured in the same run.

It works on a copy of the data set of `backup_restore.py` (generated there, once), so
that changing files never touches the reproducible original. Per repetition:

  first backup   tierkeep backup                vs tar | zstd -T0 -3   (restic: untimed init + backup)
  change         ~1% of the bytes: 100 small files rewritten, 1 MiB overwritten in place
                 in the large file
  second backup  tierkeep backup (reuse)        vs tar | zstd -T0 -3   vs restic backup
  one file       tierkeep restore --path FILE   vs restic restore --include FILE
  ls             tierkeep ls ID --json          (bytes of the archive read)
  full restore   tierkeep restore               vs zstd -d | tar -x

Medians of `--reps`, printed as ratios reference/tierkeep (greater than 1: tierkeep is
faster). A benchmark, not a test: the exit status is non-zero only on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backup_restore as br  # noqa: E402

MIB = br.MIB


def change_one_percent(root: Path, seed: int) -> tuple[int, str]:
    """Rewrites 100 small files and 1 MiB inside the largest file; returns the bytes
    changed and one small changed file (relative path) to restore later."""
    rng = random.Random(seed)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    small = [p for p in files if p.stat().st_size < 64 * 1024]
    large = max(files, key=lambda p: p.stat().st_size)
    changed = 0
    picked = rng.sample(small, min(100, len(small)))
    for p in picked:
        data = bytearray(p.read_bytes())
        for _ in range(8):
            if data:
                data[rng.randrange(len(data))] ^= 0x5A
        p.write_bytes(bytes(data))
        changed += len(data)
    size = large.stat().st_size
    at = rng.randrange(0, max(1, size - MIB))
    with open(large, "r+b") as f:
        f.seek(at)
        f.write(rng.randbytes(MIB))
    changed += MIB
    return changed, str(picked[0].relative_to(root))


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=br.DEFAULT_DATA)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=br.DEFAULT_SEED)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tierkeep", type=Path, default=br.DEFAULT_TIERKEEP)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--keep-temp", action="store_true")
    args = ap.parse_args()
    tk = args.tierkeep.resolve()
    if not (tk.is_file() and os.access(tk, os.X_OK)):
        print(f"error: no tierkeep binary at {tk}: cargo build --release -p tierkeep", file=sys.stderr)
        return 2
    restic = shutil.which("restic")
    rss = br.pick_rss_method("auto")
    br.BENCH_DIR.mkdir(parents=True, exist_ok=True)
    br.ensure_data(args.data.resolve(), args.size_mib, args.seed)
    run_dir = br.BENCH_DIR / f"incr-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    try:
        return bench(args, tk, restic, rss, run_dir)
    except br.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.keep_temp:
            shutil.rmtree(run_dir, ignore_errors=True)


def bench(args, tk: Path, restic: str | None, rss, run_dir: Path) -> int:
    env = br.tierkeep_env()
    renv = dict(os.environ, RESTIC_PASSWORD="bench-only", RESTIC_CACHE_DIR=str(run_dir / "restic-cache"))
    logs = run_dir / "logs"
    logs.mkdir()
    t: dict[str, list[float]] = {}
    rss_mib: dict[str, list[float]] = {}
    sizes: dict[str, list[int]] = {}

    def rec(name: str, r: br.Run) -> br.Run:
        t.setdefault(name, []).append(r.seconds)
        rss_mib.setdefault(name, []).append(r.maxrss_kib / 1024)
        br.log(f"  {name:28s} {r.seconds:7.2f} s  peak RSS {r.maxrss_kib / 1024:7.1f} MiB")
        return r

    def size(name: str, n: int) -> None:
        sizes.setdefault(name, []).append(n)

    for rep in range(args.reps):
        br.log(f"rep {rep + 1}/{args.reps}: copying the data set")
        rep_dir = run_dir / f"rep{rep}"
        src = rep_dir / "src"
        rep_dir.mkdir()
        subprocess.run(["cp", "-a", str(args.data.resolve()), str(src)], check=True)
        rel = str(src).lstrip("/")
        cfg = br.write_config(rep_dir, src)
        tkc = [str(tk), "--config", str(cfg), "--no-progress"]
        ref_out = rep_dir / "ref.tar.zst"
        repo = rep_dir / "restic-repo"
        tar_zstd = br.bash(f"tar -C / -cf - {shlex.quote(rel)} | zstd -T0 -3 -q -f -o {shlex.quote(str(ref_out))}")
        os.sync()

        r = rec("first backup tierkeep", br.run_timed([*tkc, "backup", "--json"], logs, f"r{rep}-b1", rss, env))
        first = json.loads(r.stdout)["manifest"]
        size("tierkeep archive", int(first["archive_bytes"]))
        os.sync()
        rec("first backup tar|zstd", br.run_timed(tar_zstd, logs, f"r{rep}-ref1", rss))
        size("tar|zstd archive", ref_out.stat().st_size)
        if restic:
            br.run_timed([restic, "-r", str(repo), "init", "-q"], logs, f"r{rep}-rinit", rss, renv)
            br.run_timed([restic, "-r", str(repo), "backup", "-q", str(src)], logs, f"r{rep}-rb1", rss, renv)

        changed, one = change_one_percent(src, args.seed + rep)
        br.log(f"changed {changed / MIB:.1f} MiB in 101 files")
        os.sync()
        r = rec("second backup tierkeep", br.run_timed([*tkc, "backup", "--json"], logs, f"r{rep}-b2", rss, env))
        second = json.loads(r.stdout)["manifest"]
        size("tierkeep reused", int(second.get("reused_bytes", 0)))
        os.sync()
        rec("second backup tar|zstd", br.run_timed(tar_zstd, logs, f"r{rep}-ref2", rss))
        if restic:
            os.sync()
            rec("second backup restic", br.run_timed(
                [restic, "-r", str(repo), "backup", "-q", str(src)], logs, f"r{rep}-rb2", rss, renv))

        one_abs = src / one
        target = rep_dir / "one"
        r = rec("one file tierkeep", br.run_timed(
            [*tkc, "restore", second["id"], "--to", str(target), "--path", str(one_abs), "--json"],
            logs, f"r{rep}-one", rss, env))
        size("one file bytes read", int(json.loads(r.stdout)["archive_bytes_read"]))
        if (target / rel / one).read_bytes() != one_abs.read_bytes():
            raise br.BenchError(f"restored {one} differs from the source")
        if restic:
            rtarget = rep_dir / "one-restic"
            rec("one file restic", br.run_timed(
                [restic, "-r", str(repo), "restore", "latest", "--target", str(rtarget), "--include", str(one_abs)],
                logs, f"r{rep}-rone", rss, renv))
        r = br.run_timed([*tkc, "ls", second["id"], "--json"], logs, f"r{rep}-ls", rss, env)
        rec("ls tierkeep", r)
        size("ls bytes read", int(json.loads(r.stdout)["archive_bytes_read"]))

        full = rep_dir / "full"
        full.mkdir()
        os.sync()
        rec("full restore tierkeep", br.run_timed(
            [*tkc, "restore", second["id"], "--to", str(full)], logs, f"r{rep}-full", rss, env))
        br.rm_tree(full)
        full.mkdir()
        os.sync()
        rec("full restore zstd|tar", br.run_timed(
            br.bash(f"zstd -d -q < {shlex.quote(str(ref_out))} | tar -x -C {shlex.quote(str(full))}"),
            logs, f"r{rep}-rfull", rss))
        br.rm_tree(rep_dir)

    m = {k: median(v) for k, v in t.items()}
    sz = {k: int(median([float(x) for x in v])) for k, v in sizes.items()}

    def ratio(ref: str, ours: str) -> float | None:
        return round(m[ref] / m[ours], 2) if ref in m and ours in m and m[ours] > 0 else None

    report = {
        "reps": args.reps,
        "medians_seconds": {k: round(v, 3) for k, v in m.items()},
        "peak_rss_mib": {k: round(max(v), 1) for k, v in rss_mib.items()},
        "bytes": sz,
        "ratios_reference_over_tierkeep": {
            "first backup vs tar|zstd (goal >= 1.2)": ratio("first backup tar|zstd", "first backup tierkeep"),
            "second backup vs tar|zstd (goal >= 4)": ratio("second backup tar|zstd", "second backup tierkeep"),
            "second backup vs restic (goal > 1)": ratio("second backup restic", "second backup tierkeep"),
            "one file vs restic restore --include (goal > 1)": ratio("one file restic", "one file tierkeep"),
            "full restore vs zstd -d | tar -x (goal >= 1.3)": ratio("full restore zstd|tar", "full restore tierkeep"),
        },
        "archive_over_tar_zstd (goal <= 1.03)": round(sz["tierkeep archive"] / sz["tar|zstd archive"], 4),
        "one_file_read_share_of_archive (goal < 2%)": f"{100 * sz['one file bytes read'] / sz['tierkeep archive']:.3f}%",
        "ls_read_share_of_archive (goal < 1%)": f"{100 * sz['ls bytes read'] / sz['tierkeep archive']:.3f}%",
        "restic": restic or "not on PATH: restic comparisons skipped",
        "notes": [
            "warm page cache; sync(2) before timed backups and restores",
            "the one-file and ls figures are from the black box (local); the S3 suite checks "
            "the bytes read from a bucket",
        ],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            if isinstance(v, dict):
                print(f"{k}:")
                for k2, v2 in v.items():
                    print(f"  {k2:50s} {v2}")
            else:
                print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
