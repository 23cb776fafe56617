"""``opd compare RECIPE``: the TML blog's compute-efficiency protocol at the recipe's scale.

1. The SFT curve: the recipe's student is an SFT checkpoint built from scratch by its prepare
   recipe (the ladder: SFT on fresh teacher samples, constant learning rate, evaluated at
   doubling data sizes); its records are read from ``compare.ladder`` (default
   ``<student.path>/prepare-run``, shipped with the checkpoint) and fitted log-linearly.
2. From that checkpoint each arm of ``compare.arms`` (continued SFT, RL, OPD with either KL
   estimator, ...) trains once per seed until held-out accuracy reaches
   ``compare.target_accuracy`` (eval.stop_at_accuracy) or its run.num_steps. With
   ``compare.sweep`` the arms' learning rates come from a sweep at the first seed first.
3. ``runs/<name>/compare.md`` (and .json, and the plot ``accuracy_vs_flops.png``): the table in
   the blog's shape (FLOPs by side, compute efficiency vs continued SFT, wall seconds; mean +-
   sd over seeds), the fit's extrapolation beside the measured continued SFT, the published
   rows in GPU-hours through the FLOPs account, and what was reused.

Every arm run is an ordinary ``opd run`` (its own run directory under ``runs/<name>/``) against
one student and one teacher server started here for all of them (each run pushes its own
weights first). Finished runs are skipped on a rerun, so a killed comparison resumes.
"""

from __future__ import annotations

import copy
from contextlib import ExitStack
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from opd_megatron.config import to_yaml
from opd_megatron.config.schema import CompareConfig, Config
from opd_megatron.errors import ConfigError
from opd_megatron.report import efficiency as eff
from opd_megatron.report.inputs import read_json
from opd_megatron.report.metrics import METRICS_FILE, read_metrics
from opd_megatron.run.rundir import reusable, run_dir_of, run_phase


def run_name(arm: str, lr: float, seed: int) -> str:
    return f"{arm}-lr{lr:g}-s{seed}"


def ladder_dir(cfg: Config) -> Path:
    return Path(cfg.compare.ladder) if cfg.compare.ladder else Path(cfg.student.path) / "prepare-run"


def read_ladder(cfg: Config) -> Tuple[List[dict], dict, Config]:
    """The ladder's records, summary and config; ConfigError naming compare.ladder if absent."""
    from opd_megatron.config.load import load_config

    d = ladder_dir(cfg)
    if not (d / METRICS_FILE).is_file() or not (d / "config.yaml").is_file():
        raise ConfigError(f"compare.ladder: {d} holds no SFT ladder run (metrics.jsonl + config.yaml); point "
                          f"compare.ladder at the run that built student.path, or rebuild the student by its "
                          f"prepare recipe (it leaves prepare-run/ beside the weights)")
    records, _ = read_metrics(d / METRICS_FILE)
    return records, read_json(d / "summary.json") or {}, load_config(d / "config.yaml")


class Plan:
    """Every run of the comparison, validated before any server starts."""

    def __init__(self, cfg: Config, recipe: str, overrides: Sequence[str]):
        from opd_megatron.run.preflight import load_and_validate

        c = cfg.compare
        self.cfg, self.root = cfg, run_dir_of(cfg)
        if not c.arms:
            raise ConfigError("compare.arms: name at least one arm (arm name -> overrides), e.g. "
                              "{sft: [objective.method=sft], opd: [objective.method=opd]}")
        if c.sft_arm not in c.arms:
            raise ConfigError(f"compare.sft_arm: {c.sft_arm!r} is not one of compare.arms "
                              f"({', '.join(c.arms)}); name the continued-SFT arm")
        if not c.seeds or len(set(c.seeds)) != len(c.seeds):
            raise ConfigError(f"compare.seeds: {list(c.seeds)} must be distinct and at least one (three for a spread)")
        unknown = sorted(set(c.sweep_lrs) - set(c.arms))
        if unknown:
            raise ConfigError(f"compare.sweep_lrs: {', '.join(unknown)} not in compare.arms; sweep arms that exist")
        if any(not (0 < level < c.target_accuracy) for level in c.also_at):
            raise ConfigError(f"compare.also_at: {list(c.also_at)} must lie below compare.target_accuracy "
                              f"({c.target_accuracy}): a run stops at the target, so only lower levels are in its curve")
        if c.sweep and not c.sweep_lrs:
            raise ConfigError("compare.sweep: true needs compare.sweep_lrs (arm -> learning rates)")
        for arm, lrs in c.sweep_lrs.items():
            if not lrs or any(not (lr > 0) for lr in lrs):
                raise ConfigError(f"compare.sweep_lrs.{arm}: {list(lrs)} must be positive learning rates")
        self.phases: Dict[str, Config] = {}
        self.arm_lr: Dict[str, float] = {}  # the lr each arm runs at: its own, or the sweep's pick
        self.base_lr: Dict[str, float] = {}  # the lr its overrides (or the recipe) give it

        def phase(arm: str, seed: int, lr: Optional[float]) -> Tuple[str, Config]:
            extra = list(overrides) + list(c.arms[arm]) + [f"run.seed={seed}", f"run.output_dir={self.root}",
                                                             f"eval.stop_at_accuracy={c.target_accuracy}"]
            if lr is not None:
                extra.append(f"optim.lr={lr}")
            try:
                p, _ = load_and_validate(recipe, extra)
            except ConfigError as e:
                raise ConfigError(f"compare.arms.{arm}: {e}") from None
            p.run.name = run_name(arm, p.optim.lr, seed)
            p.compare = CompareConfig()
            return p.run.name, p

        for arm in c.arms:
            self.arm_lr[arm] = self.base_lr[arm] = phase(arm, c.seeds[0], None)[1].optim.lr
            lrs = c.sweep_lrs.get(arm, []) if c.sweep else []
            for lr in lrs:
                name, p = phase(arm, c.seeds[0], lr)
                self.phases[name] = p
            for seed in c.seeds:
                name, p = phase(arm, seed, None)
                self.phases.setdefault(name, p)
            for lr in lrs:  # whichever rate the sweep picks, its runs at every seed
                self.arm_phases(arm, lr)
        self.done = {name for name, p in self.phases.items() if reusable(p)}  # ConfigError: a stale run

    def load_ladder(self) -> None:
        self.ladder, self.ladder_summary, self.ladder_cfg = read_ladder(self.cfg)

    def arm_phases(self, arm: str, lr: float) -> List[Tuple[int, str, Config]]:
        """(seed, run name, config) of an arm at ``lr``."""
        out = []
        for seed in self.cfg.compare.seeds:
            name = run_name(arm, lr, seed)
            if name not in self.phases:  # an lr the sweep chose: the other seeds at it
                p = copy.deepcopy(self.phases[run_name(arm, self.base_lr[arm], seed)])
                p.optim.lr, p.run.name = lr, name
                self.phases[name] = p
            out.append((seed, name, self.phases[name]))
        return out


def _run(name: str, phase: Config, root: Path, urls: Dict[str, List[str]]) -> None:
    """One arm run against the shared servers."""
    phase.engines.student.urls = urls["student"]
    phase.engines.teacher.urls = urls.get("teacher", [])
    run_phase("compare", name, phase, root, "run.quiet=true")


def _records(run_dir: Path) -> Tuple[List[dict], Optional[dict]]:
    records, _ = read_metrics(run_dir / METRICS_FILE)
    return records, read_json(run_dir / "summary.json")


def _arm_result(plan: Plan, arm: str, lr: float, level: float) -> eff.ArmResult:
    runs = [(seed, *_records(plan.root / name)) for seed, name, _ in plan.arm_phases(arm, lr)]
    method = plan.phases[run_name(arm, lr, plan.cfg.compare.seeds[0])].objective
    label = method.method + (f", {method.kl_estimator}" if method.method.startswith("opd") else "")
    return eff.arm_result(arm, label, lr, runs, level)


def choose_lr(results: Sequence[eff.ArmResult]) -> eff.ArmResult:
    """The sweep's pick: fewest FLOPs to the target among the runs that reached it, else the best
    accuracy."""
    def key(r: eff.ArmResult):
        hit = r.reached[0]
        return (0, hit["teacher_flops"] + hit["student_flops"]) if hit else (1, -r.best[0])
    return min(results, key=key)


def run_compare(cfg: Config, recipe: str, overrides: Sequence[str]) -> int:
    from opd_megatron.engines.launcher import launch_engines
    from opd_megatron.methods import needs_teacher_servers
    from opd_megatron.plan.budget import DEFAULT_MFU, DEFAULT_SAMPLING_MFU
    from opd_megatron.report.compare_report import ladder_summary, write_compare
    from opd_megatron.run.prepare import ensure_model
    from opd_megatron.run.runner import run_prepare_recipe

    plan = Plan(cfg, recipe, overrides)  # every run validated before anything starts
    reused = []
    for role in ("teacher", "student"):
        model = getattr(cfg, role)
        if model.path and not ensure_model(model, role, run_prepare_recipe):
            reused.append(f"{role}: {model.path} " + (f"(built by {model.prepare}; content hash matches)"
                                                      if model.prepare else "(given: no prepare recipe)"))
    plan.load_ladder()
    c, root = cfg.compare, plan.root
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(to_yaml(cfg))
    any_teacher = any(needs_teacher_servers(p) for p in plan.phases.values())
    sweep: Dict[str, List[eff.ArmResult]] = {}
    with ExitStack() as stack:
        urls: Dict[str, List[str]] = {}
        ran: set = set()

        def run(name: str, phase: Config) -> None:  # the sweep's pick is also its arm's first seed
            if name in ran:
                return
            ran.add(name)
            if name in plan.done:
                print(f"[compare] {name}: finished earlier, reused", flush=True)
                reused.append(f"run {name}: finished earlier in {root / name}")
                return
            if not urls:  # servers for every run, started at the first that needs them
                groups = launch_engines(cfg.student, cfg.teacher if any_teacher else None, cfg.engines,
                                        root / "logs", seed=cfg.run.seed)
                for g in groups.values():
                    stack.callback(g.stop)
                urls.update({role: g.request_urls for role, g in groups.items()})
            _run(name, phase, root, urls)

        for arm in c.arms:
            lrs = c.sweep_lrs.get(arm, []) if c.sweep else []
            for lr in lrs:
                run(run_name(arm, lr, c.seeds[0]), plan.phases[run_name(arm, lr, c.seeds[0])])
            if lrs:
                sweep[arm] = [eff.arm_result(arm, "", lr, [(c.seeds[0], *_records(root / run_name(arm, lr, c.seeds[0])))],
                                             c.target_accuracy) for lr in lrs]
                plan.arm_lr[arm] = choose_lr(sweep[arm]).lr
            for _, name, phase in plan.arm_phases(arm, plan.arm_lr[arm]):
                run(name, phase)
    levels = [c.target_accuracy, *sorted(c.also_at, reverse=True)]
    by_level = {level: [_arm_result(plan, arm, plan.arm_lr[arm], level) for arm in c.arms] for level in levels}
    arms = by_level[c.target_accuracy]
    curves = {a.name: [eff.eval_points(_records(root / name)[0]) for _, name, _ in plan.arm_phases(a.name, a.lr)]
              for a in arms}
    r = plan.ladder_cfg.rollout
    ladder = ladder_summary(plan.ladder, r.prompts_per_step * r.samples_per_prompt, c.fit_from_step)
    teacher = next((rec["teacher_accuracy"] for rec in plan.ladder if "teacher_accuracy" in rec), None)
    text = write_compare(root, name=cfg.run.name, ladder=ladder, ladder_source=str(ladder_dir(cfg)),
                         target=c.target_accuracy, teacher_accuracy=teacher, by_level=by_level, sft_arm=c.sft_arm,
                         curves=curves, sweep=sweep, reused=reused, mfu=DEFAULT_MFU, sampling_mfu=DEFAULT_SAMPLING_MFU)
    print(text, flush=True)
    return 0


def cli_main(argv: Optional[List[str]] = None) -> int:
    from opd_megatron.run.preflight import load_recipe_command

    cfg, recipe, overrides = load_recipe_command("opd compare", __doc__.split("\n")[0], argv)
    return run_compare(cfg, recipe, overrides)
