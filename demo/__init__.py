"""`make demo` and `make study`: the whole GeCA study on the embedded phantom data, from one command.

Modules: `profiles` (the sizes), `plan` (the demo's stages: exact commands of the real entry scripts, their inputs
and outputs; run by infra/stages.py), `study` (the same stages over folds and datasets), `report` and
`study_report` (REPORT.md and STUDY.md from the templates in `templates/`), `pixels` (pixel statistics), `settle`
(the steps-to-settle curve). See `python -m demo --help`.
"""
