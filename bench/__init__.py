"""gdcore's benchmark suite: `python -m bench.report` (the report) and
`pytest bench --benchmark-enable` (pytest-benchmark)."""
