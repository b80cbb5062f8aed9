"""Throughput benchmarks of vsr1_jax: one module per benchmark (`python -m benchmarks.<name> --help`), sharing
`benchmarks.common` (measured ceilings, FLOP counts, the decode roofline, HF baselines, the JSON report)."""
