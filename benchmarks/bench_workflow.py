"""Wall time and memory of the toy experiment, run as a user runs it (local profile, fresh clone).

    python benchmarks/bench_workflow.py [--keep DIR]

Two timed phases on a `git clone` of HEAD: `results/table_fid.csv` alone (target <= 6 min), then
every other table and figure (all toy tables <= 10 min in total). Per-rule seconds and peak RSS
come from the Snakemake benchmark files (benchmarks/out/toy/**.tsv); the peak-memory target
(< 4 GiB) is checked against the largest single job and against the two largest together (the
local profile runs up to `cores` jobs at once, two on the CI machine). Prints; asserts nothing.
"""

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"table_fid": 6 * 60, "all": 10 * 60, "peak_gib": 4.0}


def snakemake(work: Path, *args) -> float:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    start = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "snakemake", *args, "--profile", "profiles/local", "--quiet", "all"],
        cwd=work,
        env=env,
        check=True,
    )
    return time.monotonic() - start


def per_rule(work: Path) -> dict[str, dict]:
    """{rule: {jobs, seconds, max_seconds, max_rss_mb}} from Snakemake's benchmark files."""
    stats = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "max_seconds": 0.0, "max_rss_mb": 0.0})
    jobs = []
    for path in sorted((work / "benchmarks" / "out").rglob("*.tsv")):
        rule = path.relative_to(work / "benchmarks" / "out").parts[1].removesuffix(".tsv")
        with open(path, newline="") as f:
            row = next(csv.DictReader(f, delimiter="\t"))
        seconds = float(row["s"])
        rss = float(row["max_rss"]) if row["max_rss"] not in ("", "-", "NA") else 0.0
        entry = stats[rule]
        entry["jobs"] += 1
        entry["seconds"] += seconds
        entry["max_seconds"] = max(entry["max_seconds"], seconds)
        entry["max_rss_mb"] = max(entry["max_rss_mb"], rss)
        jobs.append(rss)
    return dict(stats), sorted(jobs, reverse=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="clone into this (new) directory and keep it")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-workflow-")) / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work)], check=True)

    fid_seconds = snakemake(work, "results/table_fid.csv")
    rest_seconds = snakemake(work)
    stats, rss = per_rule(work)

    print(f"\n{'rule':<24}{'jobs':>5}{'total s':>10}{'max s':>9}{'peak RSS MB':>13}")
    for rule, s in sorted(stats.items(), key=lambda kv: -kv[1]["seconds"]):
        print(
            f"{rule:<24}{s['jobs']:>5}{s['seconds']:>10.1f}{s['max_seconds']:>9.1f}{s['max_rss_mb']:>13.0f}"
        )
    busy = sum(s["seconds"] for s in stats.values())
    total = fid_seconds + rest_seconds
    peak, pair = rss[0] / 1024, sum(rss[:2]) / 1024
    print(
        f"\njob-seconds {busy:.0f} over {total:.0f} s wall ({busy / total:.2f} jobs in parallel on average)"
    )
    rows = [
        (
            "results/table_fid.csv wall",
            f"{fid_seconds / 60:.1f} min",
            f"<= {TARGETS['table_fid'] // 60} min",
            fid_seconds <= TARGETS["table_fid"],
        ),
        (
            "all toy tables wall",
            f"{total / 60:.1f} min",
            f"<= {TARGETS['all'] // 60} min",
            total <= TARGETS["all"],
        ),
        ("peak RSS, one job", f"{peak:.2f} GiB", f"< {TARGETS['peak_gib']} GiB", peak < TARGETS["peak_gib"]),
        (
            "peak RSS, two largest jobs",
            f"{pair:.2f} GiB",
            f"< {TARGETS['peak_gib']} GiB",
            pair < TARGETS["peak_gib"],
        ),
    ]
    for name, value, target, ok in rows:
        print(f"{name:<28}{value:>12}   target {target:<10} {'ok' if ok else 'MISSED'}")
    print(f"\nworkspace: {work}" if args.keep else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
