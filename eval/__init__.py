"""speedrun.eval: throughput, accuracy and baseline-vs-overlay reports."""
