"""``opd continual``: mid-train on new documents, then on-policy distillation from an earlier
checkpoint of the same run to restore the assistant behaviour; repeat for continual.rounds.

Each phase is an ordinary ``opd run`` (its own run directory, config.yaml, checkpoints and
report under ``runs/<name>/``), derived from the recipe:

- ``round<r>-midtrain``: sft on data.source=midtrain (documents of fact set
  data.facts_seed + r, mixed with instruct samples at data.chat_ratio; from round 2 a
  data.replay_ratio of the documents replay the earlier rounds' facts) for
  continual.midtrain_steps at continual.midtrain_lr;
- ``round<r>-opd``: the recipe's objective (opd) on instruct prompts for continual.opd_steps,
  the student being the mid-trained model and the teacher the round's starting checkpoint
  (continual.teacher=round_start) or the run's first model (base).

After every phase the model is asked back every fact of every round so far (knowledge recall)
and given held-out instruct prompts (instruction following: the format constraint of each
kind, checked by a function; and the answer's accuracy). The phases' ``eval.benchmarks``
(``ifeval``: real IFEval, opd_megatron.evaluation.ifeval, on clusters) are added as columns:
the base's from the first phase's first eval, each phase's from its last. ``continual.json`` and
``continual.md`` hold the table. Finished phases are skipped on a rerun, so a killed run
resumes: an unfinished phase resumes from its own checkpoint.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from opd_megatron.config import to_yaml
from opd_megatron.config.schema import Config
from opd_megatron.errors import ConfigError
from opd_megatron.run.rundir import reusable, run_dir_of, run_phase
from opd_megatron.data import knowledge
from opd_megatron.data.arithmetic import is_correct
from opd_megatron.methods import method_of
from opd_megatron.report.metrics import METRICS_FILE, read_metrics


def phases(cfg: Config, root: Path) -> List[Tuple[str, Config]]:
    """The phase configs of the whole run, in order (later students are earlier exports)."""
    c, out = cfg.continual, []
    base = cfg.student.path
    current = base
    for r in range(1, c.rounds + 1):
        mid = copy.deepcopy(cfg)
        mid.run.name, mid.run.output_dir = f"round{r}-midtrain", str(root)
        mid.run.num_steps, mid.optim.lr = c.midtrain_steps, c.midtrain_lr
        mid.student.path, mid.student.prepare = current, None
        mid.teacher.path, mid.teacher.prepare = "", None
        mid.objective.method, mid.objective.kl_estimator = "sft", "sampled_token"
        mid.data.source, mid.data.sft_targets = "midtrain", "reference"
        mid.data.facts_seed = cfg.data.facts_seed + r
        mid.data.replay_facts_seeds = [cfg.data.facts_seed + q for q in range(1, r)]
        if r == 1:
            mid.data.replay_ratio = 0.0  # nothing learnt before round 1 to replay
        mid.eval.interval = 0
        opd = copy.deepcopy(cfg)
        opd.run.name, opd.run.output_dir = f"round{r}-opd", str(root)
        opd.run.num_steps = c.opd_steps
        opd.student.path, opd.student.prepare = str(root / mid.run.name / "hf"), None
        opd.teacher.path = current if c.teacher == "round_start" else base
        opd.teacher.prepare = None
        opd.data.source = "instruct"
        out += [(mid.run.name, mid), (opd.run.name, opd)]
        current = str(root / opd.run.name / "hf")
    return out


# ----- evaluation -------------------------------------------------------------------------------
def _greedy(model, tokenizer, prompts: List[str], max_new_tokens: int, batch: int = 256) -> List[str]:
    import torch

    out: List[str] = []
    for i in range(0, len(prompts), batch):
        enc = tokenizer(prompts[i:i + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        out += tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    return out


def evaluate_model(model_dir: str, cfg: Config, rounds_seen: int) -> Dict[str, Any]:
    """Knowledge recall per fact set, instruction following per kind, accuracy (greedy)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    c, d = cfg.continual, cfg.data
    result: Dict[str, Any] = {"model": model_dir, "recall": {}}
    for r in range(1, max(rounds_seen, 1) + 1):
        facts = knowledge.facts(d.facts_seed + r, d.num_facts)[:c.eval_facts]
        answers = _greedy(model, tokenizer, [knowledge.recall_prompt(k) for k, _ in facts], 4)
        result["recall"][f"round{r}"] = sum(knowledge.recalled(a, v) for a, (_, v) in zip(answers, facts)) / len(facts)
    tasks = knowledge.heldout_instructions(d.num_heldout, d.min_ops, d.max_ops)[:c.eval_instructions]
    answers = _greedy(model, tokenizer, [t.prompt for t in tasks], cfg.eval.max_new_tokens)
    for kind in knowledge.KINDS:
        pairs = [(t, a) for t, a in zip(tasks, answers) if t.kind == kind]
        result[f"follows_{kind}"] = sum(knowledge.complies(kind, a) for _, a in pairs) / max(len(pairs), 1)
    result["follows"] = sum(knowledge.complies(t.kind, a) for t, a in zip(tasks, answers)) / len(tasks)
    result["accuracy"] = sum(is_correct(a, t.answer) for t, a in zip(tasks, answers)) / len(tasks)
    return result


def benchmark_scores(run_dir: Path, *, first: bool) -> Dict[str, float]:
    """avg@k of the phase's eval.benchmarks (real IFEval, AIME, ... on clusters) at its first
    eval (the model it started from) or its last (the model it produced)."""
    records, _ = read_metrics(run_dir / METRICS_FILE)
    evals = [r for r in records if "accuracy" in r]
    if not evals:
        return {}
    suffix = "_avg_at_k"
    return {k[:-len(suffix)]: v for k, v in evals[0 if first else -1].items() if k.endswith(suffix)}


def table(rows: List[Dict[str, Any]], rounds: int) -> str:
    benches = sorted({b for row in rows for b in row.get("benchmarks", {})})
    head = ["phase"] + [f"recall round {r}" for r in range(1, rounds + 1)] + [
        "IF: steps", "IF: answer only", "IF overall", "accuracy"] + benches
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        recall = [f"{row['recall'][f'round{r}']:.1%}" if f"round{r}" in row["recall"] else "-"
                  for r in range(1, rounds + 1)]
        scores = row.get("benchmarks", {})
        cells = [row["phase"], *recall, f"{row['follows_steps']:.1%}", f"{row['follows_answer']:.1%}",
                 f"{row['follows']:.1%}", f"{row['accuracy']:.1%}",
                 *(f"{scores[b]:.1%}" if b in scores else "-" for b in benches)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_continual(cfg: Config) -> int:
    from opd_megatron.run.prepare import ensure_model
    from opd_megatron.run.runner import run_prepare_recipe

    if not method_of(cfg.objective).distills:
        raise ConfigError(f"objective.method: the continual recipe distils with opd or opd+reward, "
                          f"not {cfg.objective.method}")
    if cfg.data.num_heldout < 1:
        raise ConfigError("data.num_heldout: the continual recipe measures instruction following on the "
                          "instruct task's held-out prompts; set it >= 1 (e.g. 500)")
    root = run_dir_of(cfg)
    ensure_model(cfg.student, "student", run_prepare_recipe)
    plan = phases(cfg, root)
    ran = {name for name, phase in plan if reusable(phase)}  # ConfigError: a stale run, before anything is written
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(to_yaml(cfg))
    results_path = root / "continual.json"
    done: Dict[str, Any] = json.loads(results_path.read_text()) if results_path.is_file() else {}
    rows: List[Dict[str, Any]] = []

    def record(phase: str, model_dir: str, rounds_seen: int) -> None:
        row = done.get(phase) if done.get(phase, {}).get("model") == model_dir else None
        row = row or {"phase": phase, **evaluate_model(model_dir, cfg, rounds_seen)}
        done[phase] = row
        rows.append(row)
        results_path.write_text(json.dumps(done, indent=2, sort_keys=True) + "\n")
        print(f"[continual] {phase}: recall {row['recall']}, follows {row['follows']:.1%} "
              f"(steps {row['follows_steps']:.1%}, answer {row['follows_answer']:.1%}), "
              f"accuracy {row['accuracy']:.1%}", flush=True)

    record("base", cfg.student.path, 1)
    for i, (name, phase) in enumerate(plan):
        if name not in ran:
            run_phase("continual", name, phase, root)
        record(name, str(root / name / "hf"), i // 2 + 1)
    rows[0]["benchmarks"] = benchmark_scores(root / plan[0][0], first=True)  # the base, before phase 1
    for row, (name, _) in zip(rows[1:], plan):
        row["benchmarks"] = benchmark_scores(root / name, first=False)
    results_path.write_text(json.dumps(done, indent=2, sort_keys=True) + "\n")
    text = table(rows, cfg.continual.rounds)
    (root / "continual.md").write_text(
        f"# Continual learning: {cfg.run.name}\n\n{text}\n\nrecall: greedy answer to ';key=' equals the "
        "fact's value; IF: the response meets its instruction's format (a function checks it); "
        "accuracy: the final answer is right.\n")
    print(text, flush=True)
    return 0


def cli_main(argv: Optional[List[str]] = None) -> int:
    from opd_megatron.run.preflight import load_recipe_command

    cfg, _, _ = load_recipe_command("opd continual", __doc__.split("\n")[0], argv)
    return run_continual(cfg)
