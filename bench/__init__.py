"""Performance benchmarks of GeCA (issue 9): local attention, cellular step, sampling, memory, training throughput.

`python -m bench` (or `make bench`) prints one table; docs/PERFORMANCE.md records it. Each module measures one thing
and returns table rows; `bench.timing` holds the shared timing, measuring and table helpers. `python -m
bench.gpu_check` is the prepared GPU check (`make gpu-check`).
"""

NUM_CLASSES = 11  # label columns of every benchmark model and its random multi-hot labels (OCT's 11)
