#!/usr/bin/env python3
"""Benchmark: what encryption at rest costs — aging a backup into the deletion zone with
and without `[encryption]`, measured in the same run, and the black box's backup and
restore with and without it (the black box stays plaintext, so those should not move).

Per repetition, on the data set of `backup_restore.py` (generated there, once), two
hosts that differ only in `[encryption]` (one age X25519 recipient made with
`age-keygen`):

  backup        tierkeep backup (scheduled, into the black box)
  aging         tierkeep tick (the backup ages into the deletion zone: copied, or
                encrypted on the way, and verified there)
  restore       tierkeep restore of the black-box backup
  restore (deletion)  tierkeep restore of the aged backup (decrypted with the identity)

The deletion zone is a local directory by default (so the figure is the encryption's
cost itself, not a network's); `--garage BIN` starts a Garage server on 127.0.0.1 (the
binary `.ci/run` builds) and ages into a bucket there, or `--s3-endpoint URL
--s3-bucket NAME` names a server (credentials from AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY). Medians of `--reps`,
printed as the ratio encrypted/plain of throughputs (1.0: no cost). The goal is an aging
throughput with encryption of at least 0.9x the one without. A benchmark, not a test:
the exit status is non-zero only on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import backup_restore as br  # noqa: E402

MIB = br.MIB


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_garage(bin_path: Path, root: Path) -> tuple[subprocess.Popen, dict, dict]:
    """A one-node Garage on 127.0.0.1 with a key and a bucket: (process, s3, env)."""
    import secrets
    import socket

    rpc, api, admin = free_port(), free_port(), free_port()
    root.mkdir(parents=True)
    cfg = root / "garage.toml"
    cfg.write_text(
        f'metadata_dir = "{root}/meta"\ndata_dir = "{root}/data"\ndb_engine = "sqlite"\n'
        f'replication_factor = 1\nrpc_bind_addr = "127.0.0.1:{rpc}"\n'
        f'rpc_public_addr = "127.0.0.1:{rpc}"\nrpc_secret = "{secrets.token_hex(32)}"\n'
        f'[s3_api]\ns3_region = "garage"\napi_bind_addr = "127.0.0.1:{api}"\n'
        f'root_domain = ".s3.garage.localhost"\n[admin]\napi_bind_addr = "127.0.0.1:{admin}"\n'
    )
    log_file = open(root / "garage.log", "wb")
    proc = subprocess.Popen([str(bin_path), "-c", str(cfg), "server"], stdout=log_file, stderr=log_file)

    def garage(*a: str) -> str:
        return subprocess.run(
            [str(bin_path), "-c", str(cfg), *a], check=True, capture_output=True, text=True
        ).stdout

    deadline = time.time() + 60
    while True:
        try:
            socket.create_connection(("127.0.0.1", api), timeout=1).close()
            status = garage("status")
            node = next(l.split()[0] for l in status.splitlines() if "NO ROLE ASSIGNED" in l)
            break
        except (OSError, StopIteration, subprocess.CalledProcessError):
            if time.time() > deadline or proc.poll() is not None:
                raise br.BenchError(f"Garage did not start; see {root / 'garage.log'}")
            time.sleep(0.3)
    garage("layout", "assign", "-z", "dc1", "-c", "100G", node)
    garage("layout", "apply", "--version", "1")
    key_id, secret = f"GK{secrets.token_hex(12)}", secrets.token_hex(32)
    garage("key", "import", "--yes", key_id, secret, "-n", "bench")
    garage("bucket", "create", "bench")
    garage("bucket", "allow", "--read", "--write", "--owner", "bench", "--key", "bench")
    env = {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret}
    return proc, {"endpoint": f"http://127.0.0.1:{api}", "bucket": "bench"}, env


def write_config(rep_dir: Path, data: Path, encryption: str, s3: dict | None) -> Path:
    cfg = rep_dir / "tierkeep.toml"
    deletion = ""
    if s3:
        prefix = f"bench-{os.getpid()}-{rep_dir.name}"
        deletion = f"url = \"s3://{s3['bucket']}/{prefix}\"\n"
    text = (
        f"host_id = \"bench\"\n"
        f"data_dir = {json.dumps(str(rep_dir / 'tk'))}\n"
        f"\n[source]\npaths = [{json.dumps(str(data))}]\n"
        # T2 of one second: the next `tick` ages the backup.
        f"\n[schedule]\ninterval = \"1s\"\naging = \"1s\"\n"
        f"\n[zones.black_box]\nmax_backups = 10\nmin_free = \"1MiB\"\n"
        f"\n[zones.deletion]\n{deletion}max_backups = 100\n"
        f"\n[zones.reserved]\nmax_backups = 100\n"
    )
    if s3:
        text += (
            f"\n[s3]\nendpoint = {json.dumps(s3['endpoint'])}\nforce_path_style = true\n"
            f"region = {json.dumps(s3.get('region', 'garage'))}\n"
        )
    text += encryption
    cfg.write_text(text)
    return cfg


def tk_json(tk: Path, cfg: Path, args: list[str], env: dict[str, str]) -> dict:
    out = subprocess.run(
        [str(tk), "--config", str(cfg), "--no-progress", *args, "--json"],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(out.stdout)


CPU = {}


def timed(argv: list[str], env: dict[str, str], cpu_key: str | None = None) -> float:
    """Wall seconds of a command; with `cpu_key`, its CPU seconds are kept in CPU."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run(argv, capture_output=True, text=True, env=env)
    t1 = time.perf_counter()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if cpu_key:
        CPU.setdefault(cpu_key, []).append(
            after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        )
    if p.returncode != 0:
        raise br.BenchError(f"{' '.join(argv)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return t1 - t0


def flush() -> None:
    # Flushes dirty pages, so that one step's writeback is not timed in the next.
    subprocess.run(["sync"], check=False)


def one_rep(args, tk: Path, data: Path, run_dir: Path, key: Path, public: str, s3, s3_env) -> dict:
    out = {}
    env = dict(br.tierkeep_env(), **s3_env)
    for name, encryption in [
        ("plain", ""),
        ("encrypted", f"\n[encryption]\nrecipients = [\"{public}\"]\n"),
    ]:
        rep = run_dir / name
        rep.mkdir(parents=True)
        cfg = write_config(rep, data, encryption, s3)
        base = [str(tk), "--config", str(cfg), "--no-progress"]
        t_backup = timed(base + ["backup"], env)
        listed = tk_json(tk, cfg, ["list"], env)
        bid, size = listed[0]["id"], listed[0]["size_bytes"]
        target = rep / "restore-bb"
        flush()
        t_restore = timed(base + ["restore", bid, "--to", str(target)], env)
        br.rm_tree(target)
        time.sleep(1.2)
        flush()
        t_aging = timed(base + ["tick"], env, f"aging {name}")
        aged = [b for b in tk_json(tk, cfg, ["list"], env) if b["id"] == bid]
        if not aged or aged[0]["zone"] != "deletion":
            raise br.BenchError(f"{name}: the backup did not age: {aged}")
        stored = aged[0]["size_bytes"]
        renv = dict(env, TIERKEEP_IDENTITY=str(key)) if encryption else env
        target = rep / "restore-del"
        t_restore_del = timed(base + ["restore", bid, "--to", str(target)], renv)
        br.rm_tree(target)
        out[name] = {
            "archive_bytes": size,
            "stored_bytes": stored,
            "backup_s": t_backup,
            "restore_s": t_restore,
            "aging_s": t_aging,
            "aging_mib_s": size / MIB / t_aging,
            "restore_deletion_s": t_restore_del,
        }
        br.rm_tree(rep)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=br.DEFAULT_DATA)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=br.DEFAULT_SEED)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tierkeep", type=Path, default=br.DEFAULT_TIERKEEP)
    ap.add_argument("--garage", type=Path, help="a garage binary: age into a bucket on it")
    ap.add_argument("--s3-endpoint")
    ap.add_argument("--s3-bucket")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tk = args.tierkeep.resolve()
    if not (tk.is_file() and os.access(tk, os.X_OK)):
        print(f"error: no tierkeep binary at {tk}: cargo build --release -p tierkeep", file=sys.stderr)
        return 2
    for tool in ["age-keygen"]:
        if not shutil.which(tool):
            print(f"error: {tool} not found (Debian's age package)", file=sys.stderr)
            return 2
    s3 = None
    if args.s3_endpoint or args.s3_bucket:
        if not (args.s3_endpoint and args.s3_bucket):
            print("error: --s3-endpoint and --s3-bucket go together", file=sys.stderr)
            return 2
        s3 = {"endpoint": args.s3_endpoint, "bucket": args.s3_bucket}
    s3_env: dict[str, str] = {}
    garage_proc = None
    br.BENCH_DIR.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve()
    br.ensure_data(data, args.size_mib, args.seed)
    run_dir = br.BENCH_DIR / f"enc-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    run_dir.mkdir(parents=True)
    try:
        if args.garage:
            garage_proc, s3, s3_env = start_garage(args.garage.resolve(), run_dir / "garage")
        key = run_dir / "identity.txt"
        subprocess.run(["age-keygen", "-o", str(key)], check=True, capture_output=True)
        public = subprocess.run(
            ["age-keygen", "-y", str(key)], check=True, capture_output=True, text=True
        ).stdout.strip()
        reps = []
        for n in range(args.reps):
            br.log(f"repetition {n + 1} of {args.reps}")
            reps.append(one_rep(args, tk, data, run_dir / f"rep{n}", key, public, s3, s3_env))
    except br.BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if garage_proc:
            garage_proc.terminate()
            garage_proc.wait()
        shutil.rmtree(run_dir, ignore_errors=True)

    def med(kind: str, field: str) -> float:
        return statistics.median(r[kind][field] for r in reps)

    summary = {
        "deletion_zone": ("Garage on 127.0.0.1" if args.garage else "s3") if s3 else "local directory",
        "archive_mib": med("plain", "archive_bytes") / MIB,
        "stored_overhead": med("encrypted", "stored_bytes") / med("plain", "stored_bytes"),
        "aging_mib_s": {"plain": med("plain", "aging_mib_s"), "encrypted": med("encrypted", "aging_mib_s")},
        "aging_ratio": med("encrypted", "aging_mib_s") / med("plain", "aging_mib_s"),
        "backup_ratio": med("plain", "backup_s") / med("encrypted", "backup_s"),
        "restore_ratio": med("plain", "restore_s") / med("encrypted", "restore_s"),
        "restore_deletion_ratio": med("plain", "restore_deletion_s") / med("encrypted", "restore_deletion_s"),
        "reps": reps,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"data {data} ({args.size_mib} MiB), archive {summary['archive_mib']:.0f} MiB, "
          f"deletion zone: {summary['deletion_zone']}, {args.reps} repetition(s), medians")
    print(f"  aging throughput   plain {summary['aging_mib_s']['plain']:7.1f} MiB/s   "
          f"encrypted {summary['aging_mib_s']['encrypted']:7.1f} MiB/s   "
          f"ratio {summary['aging_ratio']:.2f} (goal >= 0.90)")
    for k, v in sorted(CPU.items()):
        print(f"  CPU of tierkeep, {k}: {statistics.median(v):.2f} s")
    print(f"  stored size        encrypted/plain {summary['stored_overhead']:.5f}")
    print(f"  black-box backup   speed ratio encrypted/plain {summary['backup_ratio']:.2f} (the black box stays plaintext)")
    print(f"  black-box restore  speed ratio encrypted/plain {summary['restore_ratio']:.2f}")
    print(f"  restore from the deletion zone  speed ratio encrypted/plain {summary['restore_deletion_ratio']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
