"""Throughput benchmarks. Results go to docs/benchmarks.md with the command and the machine."""
