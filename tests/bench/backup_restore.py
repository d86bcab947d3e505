#!/usr/bin/env python3
"""Benchmark: tierkeep backup/restore against `tar | zstd -T0 -3`.

Generates (once) a reproducible ~1 GiB data set of mixed content, then times, for
`--reps` repetitions in alternating order:

  backup   tierkeep --config CFG backup --json
           vs  tar -C / -cf - DATA | zstd -T0 -3 -q -o OUT
  restore  tierkeep --config CFG restore ID --to EMPTY_DIR
           vs  zstd -d -q < OUT | tar -x -C EMPTY_DIR

reporting median wall-clock seconds, throughput of source data, peak RSS and archive
sizes. Restored trees are checked against the source (paths, sizes, modes, mtimes and
the SHA-256 of a sample of files); a mismatch is an error. This is a benchmark, not a
test: the exit status is non-zero only on errors, never because of timings.

Standard library only (Python 3.11). See README.md next to this file.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / ".bench"
DEFAULT_DATA = BENCH_DIR / "data"
DEFAULT_TIERKEEP = REPO / "target" / "release" / "tierkeep"
MARKER = ".tierkeep-bench-data.json"
GEN_VERSION = 1
DEFAULT_SEED = 20240611
MIB = 1 << 20
KIB = 1 << 10


class BenchError(Exception):
    """A failure that makes the benchmark meaningless (exit status 1)."""


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data set


def _make_vocab(rng: random.Random, n: int) -> list[str]:
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    weights = [13, 9, 8, 8, 7, 7, 6, 6, 6, 4, 4, 3, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1]
    words = set()
    while len(words) < n:
        k = rng.randint(2, 11)
        words.add("".join(rng.choices(letters, weights, k=k)))
    return sorted(words)


def _make_corpus(rng: random.Random, size: int) -> bytes:
    """Text-like bytes: lines of words from a Zipf-ish vocabulary, some numbers."""
    vocab = _make_vocab(rng, 5000)
    rng.shuffle(vocab)
    cum = list(itertools.accumulate(1.0 / (i + 1) for i in range(len(vocab))))
    words = rng.choices(vocab, cum_weights=cum, k=size // 5)
    for _ in range(len(words) // 12):
        words[rng.randrange(len(words))] = str(rng.getrandbits(20))
    lines: list[str] = []
    i = 0
    while i < len(words):
        k = rng.randint(4, 18)
        lines.append(" ".join(words[i : i + k]).capitalize() + ".\n")
        i += k
    out = "".join(lines).encode()
    while len(out) < size:
        out += out
    return out[:size]


def _log_block(rng: random.Random, size: int, start: int) -> bytes:
    """Repetitive, log-like text (highly compressible)."""
    levels = ["INFO", "INFO", "INFO", "DEBUG", "WARN"]
    paths = ["/api/v1/items", "/api/v1/users", "/healthz", "/static/app.js", "/login"]
    lines: list[str] = []
    n = 0
    i = start
    while n < size:
        line = (
            f"2024-06-11T12:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z "
            f"{levels[i % 5]} http request method=GET path={paths[(i * 7) % 5]} "
            f"status=200 bytes={(i * 37) % 9000} latency_ms={(i * 13) % 97} "
            f"req_id={rng.getrandbits(32):08x}\n"
        )
        lines.append(line)
        n += len(line)
        i += 1
    return "".join(lines).encode()[:size]


def generate(data: Path, size_mib: int, seed: int) -> dict:
    """Writes the data set into `data` (via a `.partial` directory), returns its marker."""
    total = size_mib * MIB
    small_target = total * 35 // 100
    large_target = total * 35 // 100
    random_target = total - small_target - large_target
    rng = random.Random(seed)

    tmp = data.with_name(data.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()

    # ~35 %: many small text-like files (1–64 KiB) in nested directories.
    log(f"generating {small_target / MIB:.0f} MiB of small files ...")
    corpus = _make_corpus(rng, 16 * MIB)
    files_per_leaf = 100
    written = 0
    nfiles = 0
    while written < small_target:
        size = min(rng.randint(1 * KIB, 64 * KIB), small_target - written)
        leaf = nfiles // files_per_leaf
        d = tmp / "small" / f"g{leaf // 400:02d}" / f"d{(leaf // 20) % 20:02d}" / f"d{leaf % 20:02d}"
        if nfiles % files_per_leaf == 0:
            d.mkdir(parents=True, exist_ok=True)
        header = f"# bench file {nfiles} seed {seed}\n".encode()
        body_len = max(0, size - len(header))
        off = rng.randrange(0, len(corpus) - body_len) if body_len < len(corpus) else 0
        ext = (".txt", ".md", ".log", ".csv")[nfiles % 4]
        (d / f"f{nfiles:05d}{ext}").write_bytes((header + corpus[off : off + body_len])[:size])
        written += size
        nfiles += 1

    # ~35 %: one large, partly compressible file: 1 MiB blocks alternating random bytes
    # and repetitive log text.
    log(f"generating a {large_target / MIB:.0f} MiB partly compressible file ...")
    (tmp / "large").mkdir()
    log_blocks = [_log_block(rng, MIB, i * 10000) for i in range(16)]
    with open(tmp / "large" / "mixed.bin", "wb", buffering=0) as f:
        left = large_target
        block = 0
        while left > 0:
            n = min(MIB, left)
            f.write(rng.randbytes(n) if block % 2 == 0 else log_blocks[(block // 2) % 16][:n])
            left -= n
            block += 1

    # ~30 %: incompressible random data in a few files.
    log(f"generating {random_target / MIB:.0f} MiB of random data ...")
    (tmp / "random").mkdir()
    parts = 4
    for i in range(parts):
        size = random_target // parts + (random_target % parts if i == parts - 1 else 0)
        with open(tmp / "random" / f"random{i}.bin", "wb", buffering=0) as f:
            left = size
            while left > 0:
                n = min(16 * MIB, left)
                f.write(rng.randbytes(n))
                left -= n

    marker = {
        "generator_version": GEN_VERSION,
        "size_mib": size_mib,
        "seed": seed,
        "small_files": nfiles,
        "small_bytes": small_target,
        "large_bytes": large_target,
        "random_bytes": random_target,
    }
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    if data.exists():
        shutil.rmtree(data)
    tmp.rename(data)
    os.sync()
    log(f"generated {total / MIB:.0f} MiB ({nfiles} small files) in {time.perf_counter() - t0:.1f} s")
    return marker


def ensure_data(data: Path, size_mib: int, seed: int) -> dict:
    want = {"generator_version": GEN_VERSION, "size_mib": size_mib, "seed": seed}
    marker_path = data / MARKER
    if marker_path.is_file():
        try:
            marker = json.loads(marker_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise BenchError(f"unreadable marker {marker_path}: {e}") from e
        if all(marker.get(k) == v for k, v in want.items()):
            log(f"reusing data set in {data} ({size_mib} MiB, seed {seed})")
            return marker
        log(f"data set in {data} was made with different parameters {marker}; regenerating")
        return generate(data, size_mib, seed)
    if data.exists() and (not data.is_dir() or any(data.iterdir())):
        raise BenchError(
            f"{data} exists but has no {MARKER}: it was not made by this benchmark; "
            "remove it or pick another --data"
        )
    return generate(data, size_mib, seed)


# --------------------------------------------------------------------------- inventory


@dataclass
class Inventory:
    dirs: set[str] = field(default_factory=set)
    files: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # size, mode, mtime_ns
    other: set[str] = field(default_factory=set)

    @property
    def total_bytes(self) -> int:
        return sum(v[0] for v in self.files.values())


def inventory(root: Path) -> Inventory:
    inv = Inventory()
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        for name in dirnames:
            inv.dirs.add(os.path.normpath(os.path.join(rel_dir, name)))
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if os.path.islink(p) or not os.path.isfile(p):
                inv.other.add(rel)
            else:
                inv.files[rel] = (st.st_size, st.st_mode & 0o7777, st.st_mtime_ns)
    return inv


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def hash_sample(src: Inventory, seed: int) -> list[str]:
    """All files of 1 MiB or more plus 256 random small files."""
    names = sorted(src.files)
    big = [n for n in names if src.files[n][0] >= MIB]
    small = [n for n in names if src.files[n][0] < MIB]
    rng = random.Random(seed + 1)
    return big + rng.sample(small, min(256, len(small)))


def verify_tree(
    label: str,
    restored_root: Path,
    src: Inventory,
    src_hashes: dict[str, str],
    source_root: Path,
    check_mtime: bool,
) -> None:
    if not restored_root.is_dir():
        raise BenchError(f"{label}: restored tree {restored_root} does not exist")
    got = inventory(restored_root)
    problems: list[str] = []
    missing = sorted(set(src.files) - set(got.files))
    extra = sorted(set(got.files) - set(src.files))
    if missing:
        problems.append(f"{len(missing)} files missing, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} unexpected files, e.g. {extra[:3]}")
    if got.other:
        problems.append(f"{len(got.other)} non-regular entries, e.g. {sorted(got.other)[:3]}")
    if got.dirs != src.dirs:
        d = sorted(src.dirs ^ got.dirs)
        problems.append(f"{len(d)} directories differ, e.g. {d[:3]}")
    size_bad = [n for n in src.files if n in got.files and got.files[n][0] != src.files[n][0]]
    if size_bad:
        problems.append(f"{len(size_bad)} files with wrong size, e.g. {size_bad[:3]}")
    mode_bad = [n for n in src.files if n in got.files and got.files[n][1] != src.files[n][1]]
    if mode_bad:
        problems.append(f"{len(mode_bad)} files with wrong mode, e.g. {mode_bad[:3]}")
    if check_mtime:
        mt_bad = [n for n in src.files if n in got.files and got.files[n][2] != src.files[n][2]]
        if mt_bad:
            n = mt_bad[0]
            problems.append(
                f"{len(mt_bad)} files with wrong mtime, e.g. {n}: "
                f"{got.files[n][2]} ns != {src.files[n][2]} ns"
            )
    if len(got.files) != len(src.files) or got.total_bytes != src.total_bytes:
        problems.append(
            f"{len(got.files)} files / {got.total_bytes} bytes restored, "
            f"{len(src.files)} files / {src.total_bytes} bytes in the source"
        )
    if not problems:
        for name, want in src_hashes.items():
            if sha256_file(restored_root / name) != want:
                problems.append(f"content of {name} differs from {source_root / name}")
                if len(problems) >= 5:
                    break
    if problems:
        raise BenchError(
            f"{label}: restored tree {restored_root} is NOT identical to the source:\n  - "
            + "\n  - ".join(problems)
        )


# --------------------------------------------------------------------------- running


@dataclass
class Run:
    seconds: float
    maxrss_kib: int
    stdout: str


# Peak RSS. A process's ru_maxrss includes the high-water mark of the address space it
# replaced at exec, and subprocess starts children with vfork, so wait4 straight from
# this (large) Python process reports at least *this* process's RSS for every command
# (seen: the same ~155 MiB for all of them). The command is therefore started by a small
# process that wait4s for it and reports ru_maxrss: GNU time if installed (floor ~1 MiB),
# else a minimal `python3 -S` reporter (floor ~8 MiB). For a `bash -c` pipeline the value
# is the max over bash and every process bash waited for (tar, zstd), not their sum.
_REPORTER = """
import os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, ru = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write("%d\\n" % ru.ru_maxrss)
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


@dataclass
class RssMethod:
    name: str
    gnu_time: str | None = None

    def wrap(self, argv: list[str], rss_file: Path) -> list[str]:
        if self.gnu_time:
            return [self.gnu_time, "-f", "%M", "-o", str(rss_file), *argv]
        return [sys.executable, "-S", "-E", "-c", _REPORTER, str(rss_file), *argv]


def pick_rss_method(choice: str) -> RssMethod:
    if choice in ("auto", "gnu-time"):
        t = shutil.which("time")
        if t:
            v = subprocess.run([t, "--version"], capture_output=True, text=True)
            if "GNU" in v.stdout + v.stderr:
                return RssMethod("GNU time (wait4 in /usr/bin/time)", t)
        if choice == "gnu-time":
            raise BenchError("--rss-via gnu-time: GNU time is not installed")
    return RssMethod("wait4 in a minimal python3 -S reporter")


def run_timed(
    argv: list[str], logs: Path, name: str, rss: RssMethod, env: dict[str, str] | None = None
) -> Run:
    """Runs `argv` (through `rss`), timing the wall clock; returns time and peak RSS."""
    out_path = logs / f"{name}.stdout"
    err_path = logs / f"{name}.stderr"
    rss_path = logs / f"{name}.maxrss"
    with open(out_path, "wb") as so, open(err_path, "wb") as se:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            rss.wrap(argv, rss_path), stdin=subprocess.DEVNULL, stdout=so, stderr=se, env=env
        )
        p.wait()
        t1 = time.perf_counter()
    stdout = out_path.read_text(errors="replace")
    if p.returncode != 0:
        err = err_path.read_text(errors="replace").strip()
        raise BenchError(
            f"{name} failed with exit status {p.returncode}: {shlex.join(argv)}\n"
            f"stderr (last lines):\n{os.linesep.join(err.splitlines()[-20:])}"
        )
    try:
        maxrss = int(rss_path.read_text().split()[-1])
    except (OSError, ValueError, IndexError) as e:
        raise BenchError(f"{name}: could not read the peak RSS from {rss_path}: {e}") from e
    return Run(t1 - t0, maxrss, stdout)


def bash(script: str) -> list[str]:
    return ["bash", "-c", "set -euo pipefail; " + script]


def rm_tree(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()


def tierkeep_env() -> dict[str, str]:
    # TIERKEEP_* variables would override the generated config.
    return {k: v for k, v in os.environ.items() if not k.startswith("TIERKEEP_")}


def write_config(rep_dir: Path, data: Path) -> Path:
    cfg = rep_dir / "tierkeep.toml"
    cfg.write_text(
        f"host_id = \"bench\"\n"
        f"data_dir = {json.dumps(str(rep_dir / 'tk'))}\n"
        f"\n[source]\npaths = [{json.dumps(str(data))}]\n"
        f"\n[schedule]\ninterval = \"1h\"\naging = \"3h\"\n"
        f"\n[zones.black_box]\nmax_backups = 10\n"
        f"\n[zones.reserved]\nmax_backups = 100\n"
    )
    return cfg


# --------------------------------------------------------------------------- report


def fmt_table(rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        cells = [c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def summarize(samples: list[Run]) -> dict:
    secs = [s.seconds for s in samples]
    return {
        "seconds": [round(s, 4) for s in secs],
        "median_seconds": round(statistics.median(secs), 4),
        "peak_rss_mib": round(max(s.maxrss_kib for s in samples) / 1024, 1),
    }


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark tierkeep backup/restore against tar | zstd -T0 -3.",
    )
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"data set directory (default {DEFAULT_DATA})")
    ap.add_argument("--size-mib", type=int, default=1024, help="data set size in MiB (default 1024)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"generator seed (default {DEFAULT_SEED})")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per operation (default 3)")
    ap.add_argument("--tierkeep", type=Path, default=DEFAULT_TIERKEEP, help=f"tierkeep binary (default {DEFAULT_TIERKEEP})")
    ap.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    ap.add_argument("--keep-temp", action="store_true", help="keep the run directory under .bench/")
    ap.add_argument(
        "--rss-via", choices=("auto", "gnu-time", "python"), default="auto",
        help="how peak RSS is taken: GNU time if installed (auto), or a minimal python3 -S reporter",
    )
    args = ap.parse_args()

    if args.size_mib < 8:
        ap.error("--size-mib must be at least 8")
    if args.reps < 1:
        ap.error("--reps must be at least 1")
    tk = args.tierkeep.resolve()
    if not (tk.is_file() and os.access(tk, os.X_OK)):
        print(
            f"error: tierkeep binary not found at {tk}\n"
            f"build it with:  cd {REPO} && cargo build --release -p tierkeep\n"
            "or pass --tierkeep PATH",
            file=sys.stderr,
        )
        return 2
    for tool in ("bash", "tar", "zstd"):
        if shutil.which(tool) is None:
            print(f"error: `{tool}` is not on PATH", file=sys.stderr)
            return 2

    data = args.data.resolve()
    BENCH_DIR.mkdir(parents=True, exist_ok=True)
    run_dir = BENCH_DIR / f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    try:
        data.parent.mkdir(parents=True, exist_ok=True)
        ensure_data(data, args.size_mib, args.seed)
        rss = pick_rss_method(args.rss_via)
        run_dir.mkdir(parents=True)
        return bench(args, tk, data, run_dir, rss)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if run_dir.exists():
            if args.keep_temp:
                log(f"kept {run_dir}")
            else:
                shutil.rmtree(run_dir, ignore_errors=True)


def bench(args: argparse.Namespace, tk: Path, data: Path, run_dir: Path, rss: RssMethod) -> int:
    rel = str(data).lstrip("/")
    logs = run_dir / "logs"
    logs.mkdir()
    env = tierkeep_env()

    version = subprocess.run([str(tk), "--version"], capture_output=True, text=True, env=env)
    tk_version = version.stdout.strip() or "unknown"
    zstd_version = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()
    tar_version = subprocess.run(["tar", "--version"], capture_output=True, text=True).stdout.splitlines()[0]

    floor = run_timed(["true"], logs, "rss-floor", rss)
    log(f"peak RSS via {rss.name}; floor (a `true` run) {floor.maxrss_kib / 1024:.1f} MiB")

    log("taking the source inventory and hashing the verification sample ...")
    src = inventory(data)
    src_bytes = src.total_bytes
    src_mib = src_bytes / MIB
    sample = hash_sample(src, args.seed)
    src_hashes = {n: sha256_file(data / n) for n in sample}

    # Warm-up: dropping the page cache is not possible here, so read everything once so
    # every timed run (tierkeep and reference alike) starts from a warm cache.
    # (`| cat`: GNU tar skips reading file contents when writing straight to /dev/null.)
    log("warm-up: reading the data set once (untimed tar | cat > /dev/null) ...")
    warm = run_timed(bash(f"tar -C / -cf - {shlex.quote(rel)} | cat > /dev/null"), logs, "warmup", rss)
    log(f"warm-up read took {warm.seconds:.2f} s")

    results: dict[str, dict[str, list[Run]]] = {
        "backup": {"tierkeep": [], "reference": [], "reference_fsync": []},
        "restore": {"tierkeep": [], "reference": []},
    }
    tk_archive: list[int] = []
    ref_archive: list[int] = []
    tk_logical: list[int] = []

    for rep in range(args.reps):
        rep_dir = run_dir / f"rep{rep}"
        rep_dir.mkdir()
        cfg = write_config(rep_dir, data)
        ref_out = rep_dir / "reference.tar.zst"
        ref_fsync_out = rep_dir / "reference-fsync.tar.zst"
        tk_restore = rep_dir / "restore-tierkeep"
        ref_restore = rep_dir / "restore-reference"
        backup_id: str | None = None
        tk_first = rep % 2 == 0
        order = ["tierkeep", "reference"] if tk_first else ["reference", "tierkeep"]
        log(f"rep {rep + 1}/{args.reps}: order {' then '.join(order)}")

        def tk_backup() -> None:
            nonlocal backup_id
            r = run_timed(
                [str(tk), "--config", str(cfg), "--no-progress", "backup", "--json"],
                logs, f"rep{rep}-tierkeep-backup", rss, env,
            )
            try:
                out = json.loads(r.stdout)
                backup_id = out["manifest"]["id"]
                tk_archive.append(int(out["manifest"]["archive_bytes"]))
                tk_logical.append(int(out["manifest"].get("logical_bytes", -1)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
                raise BenchError(f"tierkeep backup --json printed unexpected output ({e}):\n{r.stdout[:2000]}")
            results["backup"]["tierkeep"].append(r)

        def ref_backup() -> None:
            r = run_timed(
                bash(f"tar -C / -cf - {shlex.quote(rel)} | zstd -T0 -3 -q -o {shlex.quote(str(ref_out))}"),
                logs, f"rep{rep}-reference-backup", rss,
            )
            ref_archive.append(ref_out.stat().st_size)
            results["backup"]["reference"].append(r)

        def ref_backup_fsync() -> None:
            # The same pipeline made as durable as a tierkeep backup: fsync the archive.
            r = run_timed(
                bash(
                    f"tar -C / -cf - {shlex.quote(rel)} | zstd -T0 -3 -q -f -o {shlex.quote(str(ref_fsync_out))}"
                    f" && sync {shlex.quote(str(ref_fsync_out))}"
                ),
                logs, f"rep{rep}-reference-fsync-backup", rss,
            )
            results["backup"]["reference_fsync"].append(r)

        def tk_restore_run() -> None:
            assert backup_id is not None
            tk_restore.mkdir()
            r = run_timed(
                [str(tk), "--config", str(cfg), "--no-progress", "restore", backup_id, "--to", str(tk_restore)],
                logs, f"rep{rep}-tierkeep-restore", rss, env,
            )
            results["restore"]["tierkeep"].append(r)
            verify_tree("tierkeep restore", tk_restore / rel, src, src_hashes, data, check_mtime=True)
            rm_tree(tk_restore)

        def ref_restore_run() -> None:
            ref_restore.mkdir()
            r = run_timed(
                bash(f"zstd -d -q < {shlex.quote(str(ref_out))} | tar -x -C {shlex.quote(str(ref_restore))}"),
                logs, f"rep{rep}-reference-restore", rss,
            )
            results["restore"]["reference"].append(r)
            # Sanity only (GNU tar keeps whole-second mtimes): the reference must have
            # done the same work.
            verify_tree("reference restore", ref_restore / rel, src, {}, data, check_mtime=False)
            rm_tree(ref_restore)

        steps = {
            "backup": {"tierkeep": tk_backup, "reference": ref_backup, "reference_fsync": ref_backup_fsync},
            "restore": {"tierkeep": tk_restore_run, "reference": ref_restore_run},
        }
        for op in ("backup", "restore"):
            for who in order + (["reference_fsync"] if op == "backup" else []):
                os.sync()  # flush the previous step's dirty pages outside the timed region
                steps[op][who]()
                last = results[op][who][-1]
                log(f"  {op:7s} {who:9s} {last.seconds:7.2f} s  peak RSS {last.maxrss_kib / 1024:7.1f} MiB")
        rm_tree(rep_dir)

    # ---- report
    summary = {
        op: {who: summarize(runs) for who, runs in results[op].items()}
        for op in ("backup", "restore")
    }
    for op, s in summary.items():
        tkm = s["tierkeep"]["median_seconds"]
        refm = s["reference"]["median_seconds"]
        s["ratio_reference_over_tierkeep"] = round(refm / tkm, 3) if tkm > 0 else None
        s["tierkeep"]["throughput_mib_s"] = round(src_mib / tkm, 1) if tkm > 0 else None
        s["reference"]["throughput_mib_s"] = round(src_mib / refm, 1) if refm > 0 else None
        if "reference_fsync" in s:
            fm = s["reference_fsync"]["median_seconds"]
            s["ratio_reference_fsync_over_tierkeep"] = round(fm / tkm, 3) if tkm > 0 else None
            s["reference_fsync"]["throughput_mib_s"] = round(src_mib / fm, 1) if fm > 0 else None
    tk_arch = statistics.median(tk_archive)
    ref_arch = statistics.median(ref_archive)
    notes = [
        "page cache could not be dropped: the data set was read once (untimed) before "
        f"timing ({warm.seconds:.2f} s), so all runs read from a warm cache",
        "sync(2) is called before each timed step (untimed)",
        f"order alternates per repetition (rep 1: tierkeep first); medians of {args.reps} rep(s)",
        f"peak RSS via {rss.name}, floor {floor.maxrss_kib / 1024:.1f} MiB (a `true` run); "
        "reference peak RSS is the max over the pipeline's processes (bash, tar, zstd), not the sum",
        "tierkeep backup also SHA-256-hashes and fsyncs its archive and updates its catalog; "
        "tierkeep restore also verifies the archive hash; the reference does neither",
        "tierkeep restored trees verified: paths, sizes, modes, mtimes (ns) and SHA-256 of "
        f"{len(src_hashes)} files; reference restores checked for paths, sizes and modes",
    ]
    if any(x != src_bytes for x in tk_logical if x >= 0):
        notes.append(f"WARNING: tierkeep logical_bytes {tk_logical} != source bytes {src_bytes}")
    report = {
        "tierkeep": str(tk),
        "tierkeep_version": tk_version,
        "zstd_version": zstd_version,
        "tar_version": tar_version,
        "cpus": os.cpu_count(),
        "rss_method": rss.name,
        "rss_floor_mib": round(floor.maxrss_kib / 1024, 1),
        "data": {
            "path": str(data),
            "size_mib_requested": args.size_mib,
            "files": len(src.files),
            "dirs": len(src.dirs),
            "bytes": src_bytes,
            "seed": args.seed,
        },
        "reps": args.reps,
        "results": summary,
        "archive_bytes": {
            "tierkeep": int(tk_arch),
            "reference": int(ref_arch),
            "tierkeep_over_reference": round(tk_arch / ref_arch, 4) if ref_arch else None,
        },
        "notes": notes,
    }

    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    print(
        f"tierkeep backup/restore benchmark: {src_mib:.0f} MiB, {len(src.files)} files, "
        f"{len(src.dirs)} dirs in {data}"
    )
    print(f"{tk_version}; {zstd_version.split(',')[0]}; {tar_version}; {os.cpu_count()} CPUs; {args.reps} rep(s)")
    print()
    rows = [[
        "operation", "tierkeep s", "tar|zstd s", "ratio ref/tk",
        "tk MiB/s", "ref MiB/s", "tk RSS MiB", "ref RSS MiB",
    ]]
    for op in ("backup", "restore"):
        s = summary[op]
        rows.append([
            op,
            f"{s['tierkeep']['median_seconds']:.2f}",
            f"{s['reference']['median_seconds']:.2f}",
            f"{s['ratio_reference_over_tierkeep']:.2f}",
            f"{s['tierkeep']['throughput_mib_s']:.0f}",
            f"{s['reference']['throughput_mib_s']:.0f}",
            f"{s['tierkeep']['peak_rss_mib']:.1f}",
            f"{s['reference']['peak_rss_mib']:.1f}",
        ])
    fs = summary["backup"]["reference_fsync"]
    rows.append([
        "backup vs +fsync",
        f"{summary['backup']['tierkeep']['median_seconds']:.2f}",
        f"{fs['median_seconds']:.2f}",
        f"{summary['backup']['ratio_reference_fsync_over_tierkeep']:.2f}",
        f"{summary['backup']['tierkeep']['throughput_mib_s']:.0f}",
        f"{fs['throughput_mib_s']:.0f}",
        f"{summary['backup']['tierkeep']['peak_rss_mib']:.1f}",
        f"{fs['peak_rss_mib']:.1f}",
    ])
    print(fmt_table(rows, right=set(range(1, 8))))
    print("(backup vs +fsync: the reference pipeline followed by `sync OUT`, as durable as tierkeep's archive)")
    print("(ratio > 1 means tierkeep is faster; MiB/s is of source data)")
    print()
    print(
        f"archive size: tierkeep {tk_arch / MIB:.1f} MiB ({100 * tk_arch / src_bytes:.1f}% of source), "
        f"tar|zstd {ref_arch / MIB:.1f} MiB ({100 * ref_arch / src_bytes:.1f}%), "
        f"tierkeep/reference {tk_arch / ref_arch:.3f}"
    )
    print()
    for op in ("backup", "restore"):
        for who in sorted(k for k in summary[op] if not k.startswith("ratio")):
            secs = ", ".join(f"{x:.2f}" for x in summary[op][who]["seconds"])
            print(f"  {op:7s} {who:9s} runs: {secs}")
    print()
    for n in notes:
        print(f"note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
