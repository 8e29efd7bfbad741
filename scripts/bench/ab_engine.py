#!/usr/bin/env python3
"""Two medprm builds' `bench engine` on the same model, alternated round by round, in one run.

Speed on this machine is only comparable within one run (other processes take their share of the
cores whatever their niceness), so the two builds take turns: A, B, A, B, ... for --rounds rounds,
each run writing its own figure file. Every run also measures the machine's sgemm peak in the same
process (`gemm_gflops`), so a round where the machine was busier shows up as a lower peak, and the
per-round ratio of the two builds is reported beside the raw throughputs. The median of the
per-round ratios is the figure.

Used for issue 24's question, what following torch's CPU order (blocked linears, cascade RMSNorm,
SLEEF SiLU, torch's flash-attention order) costs: A is the build before that work, B the current
one (`make bench-numerics-cost` builds the earlier commit in a worktree of its own).

Writes a figure file in medprm's format (command, date, cpu, cores, load_average, figures).
Standard library only.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def shown(arg):
    home = os.path.expanduser("~")
    if len(home) > 1:
        arg = arg.replace(home + "/", "~/")
    return f"'{arg}'" if " " in arg else arg


def run_engine(binary, model, tokens, iters, extra):
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "f.json")
        cmd = [binary, "bench", "engine", "--model", model, "--tokens", str(tokens), "--iters", str(iters), "--figures", out, *extra]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.load(open(out))["figures"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="LABEL=BINARY of the first build")
    ap.add_argument("--b", required=True, help="LABEL=BINARY of the second build")
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--extra", default="", help="more `bench engine` arguments, space-separated, given to both")
    ap.add_argument("--figures", required=True, help="where to write the figure file")
    args = ap.parse_args()
    builds = []
    for spec in (args.a, args.b):
        label, _, binary = spec.partition("=")
        if not binary or not os.access(binary, os.X_OK):
            sys.exit(f"--a/--b: want LABEL=BINARY with an executable binary, got {spec!r}")
        builds.append((label, binary))
    extra = args.extra.split()
    rounds = []
    for r in range(args.rounds):
        row = {"round": r + 1}
        for label, binary in builds:
            f = run_engine(binary, args.model, args.tokens, args.iters, extra)
            row[label] = {k: f[k] for k in ("tokens_per_s", "gemm_gflops", "model_gflops", "prompt_tokens")}
            print(f"round {r + 1} {label}: {f['tokens_per_s']:.1f} tokens/s (gemm peak {f['gemm_gflops']:.1f} GFLOP/s)", flush=True)
        (a, _), (b, _) = builds
        row["ratio"] = row[b]["tokens_per_s"] / row[a]["tokens_per_s"]
        rounds.append(row)
    (a, abin), (b, bbin) = builds
    ratios = [r["ratio"] for r in rounds]
    figures = {
        "a": {"label": a, "binary": shown(abin)},
        "b": {"label": b, "binary": shown(bbin)},
        "model": shown(args.model),
        "tokens": args.tokens,
        "iters": args.iters,
        "extra": args.extra,
        "rounds": rounds,
        "median_ratio": statistics.median(ratios),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "median_tokens_per_s": {label: statistics.median(r[label]["tokens_per_s"] for r in rounds) for label, _ in builds},
    }
    load = [float(x) for x in open("/proc/loadavg").read().split()[:3]] if os.path.exists("/proc/loadavg") else None
    doc = {
        "command": "scripts/bench/ab_engine.py " + " ".join(shown(x) for x in sys.argv[1:]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_name(),
        "cores": len(os.sched_getaffinity(0)),
        "load_average": load,
        "figures": figures,
    }
    with open(args.figures, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    print(f"{b}/{a} tokens/s: median {figures['median_ratio']:.3f} (rounds {', '.join(f'{x:.3f}' for x in ratios)})")


if __name__ == "__main__":
    main()
