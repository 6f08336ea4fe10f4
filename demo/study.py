"""The study (`make study`): the demo's pipeline over several OCT folds and the fundus phantoms, for the paper's
Table A (image quality on OCT and fundus) and Table B (downstream OCT classification pooled over folds x seeds).

    python -m demo --study --out study_out                  # 3 OCT folds x 3 classifier seeds + fundus
    python -m demo --study --folds 5 --expand-ratio 5       # the paper's 5 folds and 5x augmentation sets

Layout under `--out`: `{kind}/` per phantom kind ("oct", "fundus") holds what its folds share (the phantoms, the
domain VAE and the separate phantom set it learns from, the synthetic sets, the classification runs), and
`{kind}/fold{k}/` each fold's own outputs (latents, models, feature cache, reconstructions). Every stage of a fold
is the demo's (demo/plan.py), named `{kind}{k}-{stage}`; docs/STUDY.md explains the design and records a run.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from demo.plan import Layout, _classify_command, _data_stage, _vae_stage, all_conditions, build_stages
from demo.profiles import Profile
from infra.stages import Stage

# The kinds of the study: OCT enters both tables, fundus (RetinaMNIST layout, fixed splits) Table A only.
KINDS: tuple[str, ...] = ("oct", "fundus")
CLASSIFIED_KIND = "oct"
# Folds written per kind (the paper's five); the study runs the first `folds` of them.
WRITTEN_FOLDS = 5
MAX_FOLDS = WRITTEN_FOLDS
# Stages every fold of a kind shares (run once per kind, named `{kind}-{stage}`).
SHARED_STAGES = ("data", "vae-data", "train-vae")
# Stages of build_stages that the study replaces by its own (per-fold reports and per-fold pooled classification).
DROPPED_STAGES = ("report", "classify")
# The placeholder classify.py fills with each fold.
FOLD_PLACEHOLDER = "{fold}"


@dataclass(frozen=True)
class StudyPlan:
    """What the study runs.

    Attributes:
        profile: the sizes of every fold's stages (demo.profiles.STUDY or STUDY_QUICK).
        out: the study's output folder (absolute).
        folds: OCT folds run (0 .. folds-1 of WRITTEN_FOLDS); the fundus phantoms have one fixed split.
        device: device of sampling, metrics and classification.
    """

    profile: Profile
    out: Path
    folds: int
    device: str

    def kind_dir(self, kind: str) -> Path:
        return self.out / kind

    def folds_of(self, kind: str) -> list[int]:
        return list(range(self.folds)) if kind == CLASSIFIED_KIND else [0]

    def layout(self, kind: str, fold: int | str) -> Layout:
        """The fold's layout; with fold `FOLD_PLACEHOLDER`, its paths carry classify.py's `{fold}` placeholder."""
        shared = self.kind_dir(kind)
        return Layout(shared / f"fold{fold}", fold=fold, kind=kind, shared=shared, vae_corpus=True)

    @property
    def report(self) -> Path:
        return self.out / "STUDY.md"

    @property
    def config(self) -> Path:
        return self.out / "study_config.json"


def stage_name(kind: str, fold: int, name: str) -> str:
    """The study's name of a demo stage: `{kind}-{name}` when the folds share it, else `{kind}{fold}-{name}`."""
    return f"{kind}-{name}" if name in SHARED_STAGES else f"{kind}{fold}-{name}"


def _fold_stages(plan: StudyPlan, kind: str, fold: int) -> list[Stage]:
    """The demo's stages of one fold, renamed, without the shared ones; fundus without the classification study
    (and so without augmentation sets). The classification folder is shared by the folds: no stage clears it."""
    lay = plan.layout(kind, fold)
    stages = []
    for s in build_stages(plan.profile, lay, plan.device):
        if s.name in SHARED_STAGES or s.name in DROPPED_STAGES:
            continue
        if kind != CLASSIFIED_KIND and s.name.startswith(("classify", "sample-aug")):
            continue
        clears = () if s.name.startswith("classify") else s.clears
        deps = tuple(stage_name(kind, fold, d) for d in s.deps)
        stages.append(replace(s, name=stage_name(kind, fold, s.name), deps=deps, clears=clears))
    return stages


def _shared_stages(plan: StudyPlan, kind: str) -> list[Stage]:
    lay = plan.layout(kind, 0)
    stages = [
        _data_stage(plan.profile, lay),
        _data_stage(plan.profile, lay, corpus=True),
        _vae_stage(plan.profile, lay),
    ]
    return [
        replace(s, name=stage_name(kind, 0, s.name), deps=tuple(stage_name(kind, 0, d) for d in s.deps)) for s in stages
    ]


def pooled_conditions(plan: StudyPlan) -> list[str]:
    """classify.py's conditions over every OCT fold: the demo's, with `{fold}` in each sample folder."""
    return all_conditions(plan.profile, plan.layout(CLASSIFIED_KIND, FOLD_PLACEHOLDER))


def _pooled_classify_stage(plan: StudyPlan, fold_stages: list[Stage]) -> Stage:
    lay = plan.layout(CLASSIFIED_KIND, 0)
    folds = tuple(plan.folds_of(CLASSIFIED_KIND))
    command = _classify_command(plan.profile, lay, plan.device, pooled_conditions(plan), folds)
    return Stage(
        name=f"{CLASSIFIED_KIND}-classify",
        description=(
            f"Table B: every condition over {plan.folds} fold(s) x {len(plan.profile.cls_seeds)} seed(s) (the "
            "per-fold stages' runs reused), paired t-tests against the baseline by (fold, seed), label fidelity"
        ),
        command=command,
        deps=tuple(s.name for s in fold_stages),
        outputs=(lay.classify / "results.json", lay.classify / "results.md"),
        resumable=True,
    )


def build_study_stages(plan: StudyPlan) -> list[Stage]:
    """Every stage of the study, in priority order (shared stages first, then fold by fold, the pooled
    classification and the report)."""
    stages: list[Stage] = []
    for kind in KINDS:
        stages += _shared_stages(plan, kind)
    per_kind = {kind: [s for fold in plan.folds_of(kind) for s in _fold_stages(plan, kind, fold)] for kind in KINDS}
    # Fold-major: the fundus fold beside the first OCT fold, so both tables fill in as the study goes.
    for fold in range(max(len(plan.folds_of(kind)) for kind in KINDS)):
        for kind in KINDS:
            stages += [s for s in per_kind[kind] if s.name.startswith(f"{kind}{fold}-")]
    stages.append(_pooled_classify_stage(plan, per_kind[CLASSIFIED_KIND]))
    stages.append(
        Stage(
            name="report",
            description="write STUDY.md: Table A (OCT and fundus), Table B, label fidelity, samples, the claims",
            command=("python", "-m", "demo.study_report", "--out", plan.layout(CLASSIFIED_KIND, 0).shown(plan.out)),
            deps=tuple(s.name for s in stages),
            outputs=(plan.report,),
        )
    )
    return stages
