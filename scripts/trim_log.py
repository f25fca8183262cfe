"""Trim an SGLang server log for docs/results: drop per-batch and per-request lines, shorten huge lines."""

import re
import sys

NOISE = re.compile(r"Prefill batch|Decode batch|GET /health|POST /generate|\"GET /|\"POST /")
for line in open(sys.argv[1], errors="replace"):
    if not NOISE.search(line):
        print(line.rstrip()[:400] + (" ..." if len(line) > 400 else ""))
