"""Performance benchmarks of GeCA (issue 9): local attention, cellular step, sampling, memory, training throughput.

`python -m bench` (or `make bench`) prints one table; docs/PERFORMANCE.md records it. Each module measures one thing
and returns table rows; `bench.timing` holds the shared timing and table helpers.
"""
