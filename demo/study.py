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

from demo.plan import Layout, _classify_command, _data_stage, _vae_stage, all_conditions, build_stages, describe
from demo.profiles import STUDY, Profile
from infra.stages import Stage

# The kinds of the study: OCT enters both tables, fundus (RetinaMNIST layout, fixed splits) Table A only.
KINDS: tuple[str, ...] = ("oct", "fundus")
CLASSIFIED_KIND = "oct"
# Folds written per kind (the paper's five); the study runs the first `folds` of them.
MAX_FOLDS = STUDY.folds
# Stages every fold of a kind shares (run once per kind, named `{kind}-{stage}`).
SHARED_STAGES = ("data", "vae-data", "train-vae")
# Stages of build_stages that the study replaces by its own (per-fold reports and per-fold pooled classification).
DROPPED_STAGES = ("report", "classify")
# The placeholder classify.py fills with each fold.
FOLD_PLACEHOLDER = "{fold}"


@dataclass(frozen=True)
class StudyPlan:
    """What the study runs: every fold's sizes (`profile`: STUDY or STUDY_QUICK), the output folder `out` (absolute),
    the OCT folds run (0 .. folds-1 of MAX_FOLDS; fundus has one fixed split) and the device of sampling, metrics and
    classification."""

    profile: Profile
    out: Path
    folds: int
    device: str

    def folds_of(self, kind: str) -> list[int]:
        return list(range(self.folds)) if kind == CLASSIFIED_KIND else [0]

    def layout(self, kind: str, fold: int | str) -> Layout:
        """The fold's layout; with fold `FOLD_PLACEHOLDER`, its paths carry classify.py's `{fold}` placeholder."""
        shared = self.out / kind
        return Layout(shared / f"fold{fold}", fold=fold, kind=kind, shared=shared, vae_corpus=True)

    @property
    def report(self) -> Path:
        return self.out / "STUDY.md"

    @property
    def config(self) -> Path:
        return self.out / "study_config.json"


def _renamed(stage: Stage, kind: str, fold: int) -> Stage:
    """A demo stage under its study name: `{kind}-{name}` when the folds share it, else `{kind}{fold}-{name}`; its
    deps likewise. The classification folder is shared by the folds: no stage clears it."""

    def name(n: str) -> str:
        return f"{kind}-{n}" if n in SHARED_STAGES else f"{kind}{fold}-{n}"

    clears = () if stage.name.startswith("classify") else stage.clears
    return replace(stage, name=name(stage.name), deps=tuple(map(name, stage.deps)), clears=clears)


def _fold_stages(plan: StudyPlan, kind: str, fold: int) -> list[Stage]:
    """The demo's stages of one fold, renamed, without the shared ones; fundus without the classification study
    (and so without augmentation sets)."""
    stages = build_stages(plan.profile, plan.layout(kind, fold), plan.device)
    skipped = ("classify", "sample-aug") if kind != CLASSIFIED_KIND else ()
    return [
        _renamed(s, kind, fold)
        for s in stages
        if s.name not in SHARED_STAGES + DROPPED_STAGES and not s.name.startswith(skipped)
    ]


def _shared_stages(plan: StudyPlan, kind: str) -> list[Stage]:
    p, lay = plan.profile, plan.layout(kind, 0)
    return [_renamed(s, kind, 0) for s in (_data_stage(p, lay), _data_stage(p, lay, corpus=True), _vae_stage(p, lay))]


def pooled_conditions(plan: StudyPlan) -> list[str]:
    """classify.py's conditions over every OCT fold: the demo's, with `{fold}` in each sample folder."""
    return all_conditions(plan.profile, plan.layout(CLASSIFIED_KIND, FOLD_PLACEHOLDER))


def _pooled_classify_stage(plan: StudyPlan, fold_stages: list[Stage]) -> Stage:
    lay = plan.layout(CLASSIFIED_KIND, 0)
    folds = tuple(plan.folds_of(CLASSIFIED_KIND))
    command = _classify_command(plan.profile, lay, plan.device, pooled_conditions(plan), folds)
    description = describe("study-classify", folds=plan.folds, seeds=len(plan.profile.cls_seeds))
    deps, outputs = tuple(s.name for s in fold_stages), (lay.classify / "results.json", lay.classify / "results.md")
    return Stage(f"{CLASSIFIED_KIND}-classify", description, command, deps, outputs, resumable=True)


def build_study_stages(plan: StudyPlan) -> list[Stage]:
    """Every stage of the study, in priority order (shared stages first, then fold by fold, the pooled
    classification and the report)."""
    stages = [s for kind in KINDS for s in _shared_stages(plan, kind)]
    per_fold = {(kind, fold): _fold_stages(plan, kind, fold) for kind in KINDS for fold in plan.folds_of(kind)}
    # Fold-major: the fundus fold beside the first OCT fold, so both tables fill in as the study goes.
    for fold in range(plan.folds):
        stages += [s for kind in KINDS for s in per_fold.get((kind, fold), [])]
    stages.append(
        _pooled_classify_stage(
            plan, [s for fold in plan.folds_of(CLASSIFIED_KIND) for s in per_fold[CLASSIFIED_KIND, fold]]
        )
    )
    command = ("python", "-m", "demo.study_report", "--out", plan.layout(CLASSIFIED_KIND, 0).shown(plan.out))
    return [*stages, Stage("report", describe("study-report"), command, tuple(s.name for s in stages), (plan.report,))]
