"""speedrun.eval.kernels: what the op microbenchmarks share — one GPU timer, the speedup report, and the set-up
that lets a bench call stock SGLang's kernels outside a server."""
