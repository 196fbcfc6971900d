"""The whole HTTP benchmark suite of issue 6 with its fixed command lines (`make bench`), in under
10 minutes on the 2-core development machine; prints every table as markdown.

    .venv/bin/python benchmarks/run_all.py [--out DIR] [--plot docs/reload_latency.png]

Each part is one script with a fixed command line; run them alone for more rounds:
    bench_http.py --rounds 2 --duration 4      goals 1, 2, 4, 5 (peers, reload check, batches, workers)
    bench_batching.py --rounds 2 --duration 4  goal 6 (dynamic batching, heavy actor)
    bench_reload.py --duration 30              goals 3 and 7 (reloads under load, freshness)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", help="keep the raw JSON results here (default: a temporary directory)")
    p.add_argument("--plot", help="write the latency-over-time PNG here")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("benchmarks need wrk (Debian: apt-get install wrk)")
    out = Path(args.out or tempfile.mkdtemp(prefix="ckptserve-bench-")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plot = str(Path(args.plot).resolve()) if args.plot else str(out / "reload_latency.png")
    py = sys.executable
    parts = [
        [py, "bench_http.py", "--rounds", "2", "--duration", "4", "--json", str(out / "http.json")],
        [py, "bench_batching.py", "--rounds", "2", "--duration", "4",
         "--json", str(out / "batching.json")],
        [py, "bench_reload.py", "--duration", "30", "--interval", "0.5", "--publishes", "50",
         "--plot", plot, "--json", str(out / "reload.json")],
    ]  # fmt: skip
    started = time.monotonic()
    for cmd in parts:
        print(f"$ {' '.join(Path(c).name if c == py else c for c in cmd)}", flush=True)
        subprocess.run(cmd, cwd=HERE, check=True)
    print(f"suite: {time.monotonic() - started:.0f} s; raw results in {out}")


if __name__ == "__main__":
    main()
