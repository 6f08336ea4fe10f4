"""`make demo`: the whole GeCA study on the embedded phantom data, from one command (see `python -m demo --help`).

Modules: `profiles` (the sizes of the full and quick demo), `plan` (the stages: exact commands of the real entry
scripts, their inputs and outputs), `runner` (runs stages as subprocesses, logs them, stamps finished ones so a
re-run continues), `labels` (the label files the augmentation sampler reads in image space), `report` (REPORT.md).
"""
