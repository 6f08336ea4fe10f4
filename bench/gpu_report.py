"""The GPU check's report: report.json holds every stage's figures, REPORT.md is rendered from it with
`templates/gpu_report.md` (docs/PERFORMANCE.md, "GPU check", describes both). The stages record data and a status
(bench.gpu_check); the describe_* functions here turn a stage's data into its headline, tables and notes. Prose lives
in the template; the code computes values.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from infra.markdown import format_bytes, markdown_table
from infra.stages import atomic_write_text, read_json, write_json
from infra.templates import fill_block

TEMPLATE = Path(__file__).with_name("templates") / "gpu_report.md"
STAGES = ("pytest", "bench", "train", "sample", "fp16")
TITLES = {
    "pytest": "1. pytest -m gpu",
    "bench": "2. python -m bench",
    "train": "3. training burst (train.py, fp16)",
    "sample": "4. sampling throughput (sample_ddp.py)",
    "fp16": "5. fp16 against fp32",
}
FINISHED = ("ok", "failed")  # statuses `--resume` keeps
# The README's first GPU targets.
TRAIN_TARGET_STEPS_PER_S = 2.0  # GeCA-S, batch 128, one H100-class GPU
SAMPLE_TARGET_S_PER_IMAGE = 0.5  # 250 steps with CFG

# Dense (no sparsity) fp16/bf16 tensor-core peaks in TFLOP/s from the vendors' datasheets, matched against the
# device name in this order. GeForce parts are listed at their fp32-accumulate rate, which PyTorch uses.
DENSE_PEAKS_TFLOPS: tuple[tuple[str, str, float], ...] = (
    (r"GH200", "GH200", 989.4),
    (r"H200 NVL", "H200 NVL", 835.5),
    (r"H200", "H200 SXM", 989.4),
    (r"H100 NVL", "H100 NVL", 835.5),
    (r"H100 PCIE", "H100 PCIe", 756.5),
    (r"H100", "H100 SXM", 989.4),
    (r"B200", "B200", 2250.0),
    (r"A100", "A100", 312.0),
    (r"L40S", "L40S", 362.1),
    (r"L40", "L40", 181.0),
    (r"L4", "L4", 121.0),
    (r"A30", "A30", 165.0),
    (r"A10", "A10", 125.0),
    (r"RTX A6000", "RTX A6000", 154.8),
    (r"RTX 4090", "GeForce RTX 4090", 165.2),
    (r"RTX 3090", "GeForce RTX 3090", 71.0),
    (r"V100", "V100 (fp16)", 125.0),
    (r"T4", "T4 (fp16)", 65.0),
    (r"MI300X", "Instinct MI300X", 1307.4),
)


def peak_assumed(device_name: str, override: float | None) -> dict:
    """The MFU peak the report states: `--peak-tflops`, else the first entry of DENSE_PEAKS_TFLOPS whose pattern is a
    word of the device name, else none (no MFU)."""
    if override:
        return {"tflops": override, "text": f"{override:g} TFLOP/s (--peak-tflops)"}
    for pattern, label, tflops in DENSE_PEAKS_TFLOPS:
        if re.search(rf"\b{pattern}\b", device_name.upper()):
            text = f"{label} dense fp16/bf16 tensor peak {tflops:g} TFLOP/s (datasheet, for '{device_name}')"
            return {"tflops": tflops, "label": label, "text": text}
    return {"tflops": None, "text": f"unknown for '{device_name}': MFU not computed (give --peak-tflops)"}


@dataclass
class StageReport:
    """One stage's outcome, as report.json stores it and REPORT.md shows it."""

    key: str
    title: str
    cap_s: float
    status: str = "not run"  # not run | running | ok | failed | timed out | error | interrupted
    seconds: float = 0.0
    headline: str = ""
    tables: list[dict] = field(default_factory=list)  # {"title", "columns", "rows"} or {"title", "text"}
    notes: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)
    logs: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


class Report:
    """The whole report; `write()` replaces report.json and REPORT.md atomically."""

    def __init__(self, out: Path, mode: str, sizes: object, caps: dict[str, float]) -> None:
        self.out, self.mode, self.sizes = out, mode, sizes
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.t0 = time.time()
        self.device: dict = {}
        self.peak: dict = {}
        self.finished: str | None = None
        self.stopped: str | None = None  # why the run ended early (signal, missing packages)
        self.stages = {k: StageReport(k, TITLES[k], caps[k]) for k in STAGES}

    def to_json(self) -> dict:
        return {
            "version": 1,
            "mode": self.mode,
            "started": self.started,
            "finished": self.finished,
            "stopped": self.stopped,
            "complete": all(s.status in FINISHED for s in self.stages.values()),
            "wall_seconds": time.time() - self.t0,
            "device": self.device,
            "peak": self.peak,
            "sizes": asdict(self.sizes),
            "targets": self.targets(),
            "stages": [asdict(s) for s in self.stages.values()],
        }

    def targets(self) -> list[dict]:
        """(target, measured, met) of the README's first GPU targets, from stage 3's and stage 4's data."""
        targets = (
            part("target_train", rate=f"{TRAIN_TARGET_STEPS_PER_S:g}"),
            part("target_sample", seconds=f"{SAMPLE_TARGET_S_PER_IMAGE:g}"),
        )
        if self.mode == "dry":
            return [{"target": t, "measured": part("target_dry"), "met": "n/a"} for t in targets]
        at_128 = [r for r in self.stages["train"].data.get("runs", []) if r.get("batch") == 128]
        sps = next((r["steps_per_sec"] for r in at_128 if not r.get("compile") and r.get("steps_per_sec")), None)
        geca = self.stages["sample"].data.get("models", {}).get("GeCA-S", {})
        e2e, denoise = (geca.get(k, {}).get("seconds") for k in ("end_to_end", "denoise"))
        spi = e2e / geca["batch"] if e2e and geca.get("batch") else None
        on = self.peak.get("label") or self.device.get("name", "?")
        train = part("measured_train", rate=f"{sps:.2f}", device=on) if sps else None
        sample = part("measured_sample", seconds=f"{spi:.3f}") if spi else None
        if spi is None and denoise and denoise / geca["batch"] > SAMPLE_TARGET_S_PER_IMAGE:
            # Without the end-to-end run, denoising alone already misses the target: decoding only adds time.
            spi = denoise / geca["batch"]
            sample = part("measured_denoise", seconds=f"{spi:.3f}")
        return [
            target_row(targets[0], 3, train, sps is not None and sps >= TRAIN_TARGET_STEPS_PER_S),
            target_row(targets[1], 4, sample, spi is not None and spi <= SAMPLE_TARGET_S_PER_IMAGE),
        ]

    def write(self) -> None:
        write_json(self.out / "report.json", self.to_json())
        atomic_write_text(self.out / "REPORT.md", render_report(read_json(self.out / "report.json")))


def target_row(target: str, stage: int, measured: str | None, met: bool) -> dict:
    """One row of the targets table; `measured` None when the stage has no figure for it."""
    if measured is None:
        return {"target": target, "measured": part("target_unmeasured", stage=stage), "met": "n/a"}
    return {"target": target, "measured": measured, "met": "yes" if met else "NO"}


# REPORT.md from report.json


def fmt(x: float | None, digits: int = 3) -> str:
    """A number to `digits` significant figures, or 'n/a'."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}g}"


# part(block, **values): a block of the report template with str() of each value filled in (infra.templates).
part = functools.partial(fill_block, TEMPLATE)


def bullets(block: str, **values: object) -> list[str]:
    """A template block of '- ' items as notes, one line each (the template wraps them)."""
    return [re.sub(r"\n\s*", " ", item.strip()) for item in re.split(r"^- ", part(block, **values), flags=re.M)[1:]]


def summary_table(report: dict) -> str:
    """One row per stage: status, time / cap, headline."""
    rows = [
        [s["title"], s["status"], f"{s['seconds']:.0f} s / {s['cap_s']:.0f} s", s["headline"]] for s in report["stages"]
    ]
    return markdown_table(["stage", "status", "time / cap", "result"], rows)


def targets_table(report: dict) -> str:
    return markdown_table(["target", "measured", "met"], [list(t.values()) for t in report["targets"]])


def render_stage(stage: dict) -> str:
    """A stage's section: status, headline, tables, notes, commands, logs."""
    seconds, cap = f"{stage['seconds']:.0f}", f"{stage['cap_s']:.0f}"
    parts = [part("stage", title=stage["title"], status=stage["status"], seconds=seconds, cap=cap), stage["headline"]]
    for t in stage["tables"]:
        table = t["text"] if "text" in t else markdown_table(t["columns"], t["rows"])
        parts.append(part("table", title=t["title"], table=table))
    parts.append("\n".join(f"- {note}" for note in stage["notes"]))
    if stage["commands"]:
        parts.append(part("commands", commands="\n".join(stage["commands"])))
    if stage["logs"]:
        parts.append(part("logs", logs=", ".join(f"`{p}`" for p in stage["logs"])))
    return "\n\n".join(p for p in parts if p)


def render_report(report: dict) -> str:
    """REPORT.md of a report.json."""
    d, finished = report["device"], report["finished"]
    facts = part("gpu_facts", memory=format_bytes(d.get("memory_bytes")), capability=d.get("capability"))
    text = part(
        "report",
        mode=part("mode_dry" if report["mode"] == "dry" else "mode_gpu"),
        device_name=d.get("name", "?"),
        gpu_facts=facts if d.get("cuda") else "",
        torch=d.get("torch", "?"),
        cuda_runtime=d.get("cuda_runtime"),
        python=d.get("python", "?"),
        peak=report["peak"].get("text", "n/a"),
        started=report["started"],
        finished=f"finished {finished}" if finished else "not finished",
        wall=f"{report['wall_seconds']:.0f}",
        stopped=f"; stopped: {report['stopped']}" if report["stopped"] else "",
        summary=summary_table(report),
        targets=targets_table(report),
        stages="\n\n".join(render_stage(s) for s in report["stages"]),
    )
    return text + "\n"


# Headlines, tables and notes of the stages' data


def percent(x: float | None) -> str:
    """A fraction as a percentage to 3 significant figures, or 'n/a'."""
    return f"{fmt(100 * x)}%" if x else "n/a"


def train_row(r: dict) -> list:
    """The table row of one train.py burst."""
    speed = [fmt(r.get("steps_per_sec")), fmt(r.get("images_per_sec")), format_bytes(r.get("peak_bytes"))]
    flops = [fmt(r["flops_per_step"] / 1e12) if r.get("flops_per_step") else "n/a", fmt(r.get("achieved_tflops"))]
    return [r["batch"], "yes" if r["compile"] else "no", r["status"], *speed, *flops, percent(r.get("mfu"))]


def describe_train(rep: StageReport, sizes, largest: int | None, peak_text: str) -> None:
    """Stage 3's table (one row per train.py burst), notes and headline."""
    runs, side = rep.data["runs"], sizes.image_size // 8
    cols = ["batch", "--compile", "status", "steps/s", "images/s", "peak memory", "TFLOP/step", "TFLOP/s", "MFU"]
    title = f"{sizes.train_model}, {side}x{side}x4 latents"
    rep.tables.append({"title": title, "columns": cols, "rows": [train_row(r) for r in runs]})
    first, last = sizes.warmup_steps + 1, sizes.warmup_steps + sizes.timed_steps
    rep.notes += bullets(
        "train_notes", first=first, last=last, warmup=sizes.warmup_steps, peak=peak_text, latents=sizes.num_latents
    )
    rep.notes += [] if sizes.compile_runs else bullets("train_dry")
    for r in runs:
        if r["status"] not in ("ok", "out of memory"):
            compiled = " --compile" if r["compile"] else ""
            error = f": {r['error']}" if r.get("error") else ""  # a run stopped at the cap has no error of its own
            rep.notes.append(f"batch {r['batch']}{compiled}: {r['status']}{error}")
    if largest:
        rep.headline = f"largest batch that fits: {largest}"
    elif runs and all(r["status"] == "out of memory" for r in runs):
        rep.headline = "no batch fitted"
    else:
        rep.headline = "largest batch not found (see the notes)"
    best = max((r for r in runs if r["status"] == "ok" and not r["compile"]), key=lambda r: r["batch"], default=None)
    if best:
        mfu = f", MFU {percent(best['mfu'])}" if best.get("mfu") else ""
        rep.headline += f"; batch {best['batch']}: {fmt(best['steps_per_sec'])} steps/s, "
        rep.headline += f"{fmt(best['images_per_sec'])} images/s{mfu}"


def sample_row(key: str, m: dict) -> list:
    """The table row of one model of the sampling worker's JSON."""
    den, e2e, batch = m.get("denoise", {}), m.get("end_to_end", {}), m.get("batch")
    d_spi = den["seconds"] / batch if den.get("seconds") else None
    e_spi = e2e["seconds"] / batch if e2e.get("seconds") else None
    denoise = [fmt(1 / d_spi) if d_spi else "n/a", fmt(d_spi)]
    end_to_end = [fmt(1 / e_spi) if e_spi else e2e.get("skipped", "n/a"), fmt(e_spi), fmt(e2e.get("wall_seconds"))]
    return [key, batch or "none fits", *denoise, *end_to_end, format_bytes(den.get("peak_bytes"))]


def describe_sample(rep: StageReport, sizes) -> None:
    """Stage 4's table (one row per model), notes, the sample_ddp.py commands and the GeCA model's headline."""
    models = rep.data.get("models", {})
    for key, m in models.items():
        rep.notes += [f"{key}: batch {b} {what}" for b, what in m.get("tried", []) if what != "fits"]
        rep.commands += [m["command"]] if m.get("command") else []
    cols = ["model", "batch", "images/s (no VAE)", "s/image (no VAE)", "images/s (sample_ddp.py, VAE)"]
    cols += ["s/image (sample_ddp.py, VAE)", "wall s incl. load", "peak memory (denoising)"]
    title = f"{sizes.sample_steps} steps, CFG 1.5, {sizes.image_size}x{sizes.image_size} images"
    rep.tables.append({"title": title, "columns": cols, "rows": [sample_row(k, m) for k, m in models.items()]})
    vae = rep.data.get("vae", {})
    if isinstance(vae.get("parameters"), int):
        blocks = part("vae_tiny" if vae.get("tiny") else "vae_sd")
        vae_note = part("vae_built", blocks=blocks, parameters=f"{vae['parameters']:,}")
    else:
        vae_note = part("vae_missing")
    rep.notes += bullets("sample_notes", batches=", ".join(map(str, sizes.sample_batches)), vae=vae_note)
    geca = next((k for k in models if k.startswith("GeCA")), None)
    if geca and models[geca].get("denoise"):
        g = models[geca]
        parts = [f"{geca}: {g['denoise']['seconds'] / g['batch']:.3g} s/image denoising"]
        if g.get("end_to_end", {}).get("seconds"):
            parts.append(f"{g['end_to_end']['seconds'] / g['batch']:.3g} s/image with VAE")
        rep.headline = ", ".join(parts) + f" (batch {g['batch']})"


def describe_fp16(rep: StageReport, sizes, tol: float, ghg_ok: bool) -> None:
    """Stage 5's tables (loss per step; GHG sampling per model call), notes and headline."""
    data, ghg = rep.data, rep.data.get("ghg", {})
    l32, l16, rel = data.get("losses_fp32", []), data.get("losses_fp16", []), data["relative_gaps"]
    rows = [[k + 1, f"{b:.6f}", f"{a:.6f}", f"{r:.2e}"] for k, (a, b, r) in enumerate(zip(l16, l32, rel))]
    title = f"{sizes.fp16_model}, batch {sizes.fp16_batch}: loss per step from the same state"
    rep.tables.append(
        {"title": title, "columns": ["step", "fp32 loss", "fp16 loss", "|fp16 - fp32| / fp32"], "rows": rows}
    )
    if ghg:
        rows = []
        for name in (n for n in ("fp32", "fp16") if n in ghg):
            first_bad = ghg[name].get("first_non_finite_step")
            extremes = [fmt(ghg[name].get("max_abs_sample")), fmt(ghg[name].get("max_abs_cells"))]
            rows.append([name, "none" if first_bad is None else first_bad, *extremes])
        title = f"GHG sampling, {ghg.get('steps')} steps, CFG {ghg.get('cfg_scale')}, batch {ghg.get('batch')}"
        cols = ["model call", "first non-finite step", "max |sample|", "max |cell state|"]
        rep.tables.append({"title": title, "columns": cols, "rows": rows})
    rep.notes += bullets(
        "fp16_notes",
        tol=f"{tol:g}",
        steps=sizes.fp16_steps,
        skipped=data.get("scaler_skipped_steps", "n/a"),
        redrawn=ghg.get("redrawn", "?"),
        diff=fmt(ghg.get("fp16_vs_fp32_max_abs_diff_rel")),
    )
    gap = f"max relative loss gap {max(rel):.2e} over {len(rel)} steps (tolerance {tol:g}); " if rel else "no losses; "
    rep.headline = gap + f"GHG fp16 {'finite' if ghg_ok else 'NOT finite' if ghg.get('fp16') else 'not run'}"
