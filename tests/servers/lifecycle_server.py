"""A real HTTP process for launcher lifecycle tests: behaves like a server that starts, becomes healthy,
crashes or hangs. It also starts a child process, so tests can check that teardown leaves no orphans.

    python lifecycle_server.py --port P --mode ok|crash|never-healthy [--delay S] [--child-pid-file F]
"""

import argparse
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = argparse.ArgumentParser()
args.add_argument("--port", type=int, required=True)
args.add_argument("--mode", default="ok")
args.add_argument("--delay", type=float, default=0.5)
args.add_argument("--child-pid-file")
opts = args.parse_args()

child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
if opts.child_pid_file:
    with open(opts.child_pid_file, "w") as f:
        f.write(str(child.pid))
print(f"starting on {opts.port} in mode {opts.mode}", flush=True)
time.sleep(opts.delay)
if opts.mode == "crash":
    print("Traceback (most recent call last):\nRuntimeError: CUDA out of memory (simulated)", flush=True)
    sys.exit(3)
ready = time.monotonic()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/health" and opts.mode == "ok"
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"starting")

    def log_message(self, *a):
        pass


print("The server is fired up and ready to roll!", flush=True)
ThreadingHTTPServer(("127.0.0.1", opts.port), Handler).serve_forever()
