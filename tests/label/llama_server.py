"""Serves a GGUF model with llama.cpp's OpenAI-compatible server (the xllamacpp wheel) on
127.0.0.1 for tests/label.rs: prints `listening <url>` once the model is loaded, and stops when
its stdin closes (the test ends) or on SIGTERM.

usage: llama_server.py MODEL [--port N] [--parallel N] [--ctx N] [--threads N]
"""
import argparse
import os
import sys

import xllamacpp


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--ctx", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    p = xllamacpp.CommonParams()
    p.model.path = a.model
    p.port = a.port
    p.n_parallel = a.parallel
    p.n_ctx = a.ctx
    p.cpuparams.n_threads = a.threads
    p.cpuparams_batch.n_threads = a.threads
    p.warmup = False
    server = xllamacpp.Server(p)
    print("listening", server.listening_address, flush=True)
    # The server runs on its own threads; end with the test (without waiting for them).
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    main()
