"""FLOPs accounting for OPD runs: per-token formulas, a per-role counter, and `opd flops`.

Run it::

    opd flops --student qwen3-8b --teacher qwen3-32b --tokens 1.25e9   # the TML OPD row
    opd flops --table tml                                               # the blog's 9x / 30x
    python -m opd_megatron.plan.flops --student path/to/hf_dir --tokens 1e6

The formulas (one place, used by the loop, the report and the CLI):

* ``N`` (``ModelShape.flops_params``) counts every weight that takes part in a matmul per
  token: all transformer-block weights **plus the output projection (lm_head)**. The input
  embedding is a table lookup (no FLOPs) and is left out. Kaplan et al.'s "non-embedding N"
  also drops the lm_head, but at vocab 151,936 that matmul is 8% of Qwen3-8B's per-token
  FLOPs, so we count it; a tied model counts its shared matrix once (as the lm_head).
  Norm weights (elementwise, 0.001%) are left out, so N is exactly the matmul weights and
  2N matches torch's FLOP counter. Qwen3-8B: 7.57e9; Qwen3-32B: 31.98e9.
* forward FLOPs per token = ``2 N + 4 * n_layers * d_attn * context_tokens`` where
  ``d_attn = num_heads * head_dim`` and ``context_tokens`` is the number of keys the token
  attends to (its position + 1 under a causal mask, prompt included). The attention term is
  QK^T (2 d_attn FLOPs per key) plus AV (2 d_attn per key) per layer. Averaged over a causal
  sequence of L tokens (mean context (L+1)/2) this equals Kaplan's ``2 n_layer n_ctx d_attn``
  with n_ctx = L, and PaLM's ``6N + 12 L H Q T`` for training.
* training FLOPs per token = 3 x forward (forward + backward of activations and weights).
  With LoRA (``lora.rank`` > 0) the base weights are frozen: their backward computes only the
  activation gradients, so training is about ``4 N + 6 N_lora + 3 x attention`` per token
  (exact form in ``train_flops_per_token``), where ``N_lora`` (``lora_params``) is the
  adapters' ``r (d_in + d_out)`` per adapted linear. The learner's forward passes also run the
  adapters (``2 N_lora``); the servers get the merged weights and cost 2N.
* Roles: student_sampling (prefill + decode of the student, forward), teacher_sampling
  (the teacher generating SFT data, forward), teacher_scoring (one teacher prefill over
  prompt + response), learner_train (fwd + bwd), learner_recompute (learner logprob forward).
  Teacher FLOPs = teacher_sampling + teacher_scoring; student FLOPs = everything else.

With 4K-token sequences (mean context 2048) the TML OPD row (1.25e9 tokens) comes out as
student 8N+attention = 8.17e19 (blog 8.2e19) and teacher 2N+attention = 8.53e19 (8.4e19).
With Kaplan's non-embedding N instead the student would be 7.55e19 (-8%); with all stored
parameters (input embedding too) 8.79e19 (+7%). The blog's own numbers fit 8N / 2N with the
model-card sizes and no attention term; ours adds the attention term and drops the lookup.
tests/test_flops_account.py checks 2N + attention against torch's FlopCounterMode on a real
Qwen3 forward (exact) and the shapes against the model cards' total / non-embedding sizes.
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Optional, Sequence, Tuple

from opd_megatron.errors import ConfigError
from opd_megatron.models.qwen3_shapes import ALIASES as QWEN3_ALIASES
from opd_megatron.models.qwen3_shapes import QWEN3_SHAPES
from opd_megatron.models.shape import ModelShape, decoder_shape_fields

if TYPE_CHECKING:
    from opd_megatron.config.schema import ModelConfig
    from opd_megatron.methods import StepRoles
    from opd_megatron.types import Rollout

ROLES = ("student_sampling", "teacher_sampling", "teacher_scoring", "learner_train",
         "learner_recompute")
TEACHER_ROLES = ("teacher_sampling", "teacher_scoring")
STUDENT_ROLES = ("student_sampling", "learner_train", "learner_recompute")
DEFAULT_CONTEXT_TOKENS = 2048
"""Mean attended context of a 4K-token sequence (the TML recipe's max_tokens 4096)."""


def shape_from_hf_config(cfg: dict, name: str = "") -> ModelShape:
    """A ModelShape from the dict of an HF config.json (Qwen3 / Llama-style dense models)."""
    if cfg.get("num_experts") or cfg.get("n_routed_experts"):
        raise ConfigError(f"{name or 'config.json'}: mixture-of-experts configs are not "
                          "supported by the FLOPs account; use a dense model")
    return ModelShape(**decoder_shape_fields(cfg, name or "config.json"), name=name)


# Named shapes from the one Qwen3 table (opd_megatron/models/qwen3_shapes.py).
NAMED_SHAPES: Dict[str, ModelShape] = {
    name: shape_from_hf_config(cfg, name) for name, cfg in QWEN3_SHAPES.items()
}
_ALIASES = QWEN3_ALIASES


def resolve_shape(name_or_path: str) -> ModelShape:
    """A named Qwen3 shape ('qwen3-8b'), an HF model dir, or a config.json path."""
    key = name_or_path.strip().lower()
    key = _ALIASES.get(key, key)
    if key in NAMED_SHAPES:
        return NAMED_SHAPES[key]
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            cfg = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err.msg}); pass an HF config.json") from None
        return shape_from_hf_config(cfg, name=str(name_or_path))
    known = sorted(NAMED_SHAPES) + sorted(_ALIASES)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"unknown model {name_or_path!r}: {hint}use one of {', '.join(known)} "
                      "or an HF model directory / config.json path")


def model_shape(model: "ModelConfig", hf: Optional[dict] = None, name: str = "") -> Optional[ModelShape]:
    """The shape of a configured model, the one way plans, placement and FLOPs estimates get it:
    ``hf`` (its config.json, already parsed) when given, else ``model.path``'s config.json when
    readable, else ``model.flops_name`` (``resolve_shape``). None when there is none of them or
    the config.json is not valid JSON."""
    if hf is None and model.path:
        cfg_file = Path(model.path) / "config.json"
        if cfg_file.is_file():
            try:
                hf = json.loads(cfg_file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None
    if hf is not None:
        return shape_from_hf_config(hf, name)
    return resolve_shape(model.flops_name) if model.flops_name else None


def lora_params(shape: ModelShape, rank: int, targets: Iterable[str]) -> int:
    """Adapter weights of LoRA rank ``rank`` on the Megatron linears ``targets`` (all layers)."""
    return shape.num_layers * sum(rank * sum(shape.linears[t]) for t in targets)


def forward_flops_per_token(shape: ModelShape, context_tokens: float = 0.0,
                            adapter_params: int = 0) -> float:
    """2N (+ 2 N_lora) plus the attention-score term for a token attending to
    ``context_tokens`` keys."""
    return (2.0 * (shape.flops_params + adapter_params)
            + 4.0 * shape.num_layers * shape.d_attn * context_tokens)


def train_flops_per_token(shape: ModelShape, context_tokens: float = 0.0, lora_rank: int = 0,
                          lora_targets: Iterable[str] = ()) -> float:
    """Forward + backward: 6N + 3x attention.

    With LoRA the base weights are frozen, so their backward computes only activation
    gradients: 4N + 6 N_lora + 3x attention, less the first layer's input gradient (its input,
    the frozen embedding, needs none): 2 d (d_attn + 2 d_kv) of the QKV projection and 2 r d of
    its adapter. That is exact (torch's FLOP counter) when linear_qkv is a target; with it left
    out autograd skips more of the first layer and the figure is an upper bound.
    """
    full = 3.0 * forward_flops_per_token(shape, context_tokens)
    if not lora_rank:
        return full
    targets = list(lora_targets)
    adapters = lora_params(shape, lora_rank, targets)
    first_layer = 0.0
    if "linear_qkv" in targets:
        d, qkv = shape.linears["linear_qkv"]
        first_layer = 2.0 * d * qkv + 2.0 * lora_rank * d
    return full - 2.0 * shape.flops_params + 6.0 * adapters - first_layer


def causal_context_tokens(prefix_tokens: int, new_tokens: int) -> Tuple[int, int]:
    """(num_tokens, summed attended keys) for ``new_tokens`` processed after ``prefix_tokens``.

    Token i of the new span (0-based) attends to prefix_tokens + i + 1 keys (itself included).
    Prefill of a whole sequence is ``(0, L)``; decoding a response after its prompt is
    ``(prompt_len, response_len)``.
    """
    if prefix_tokens < 0 or new_tokens < 0:
        raise ValueError("token counts must be >= 0")
    summed = new_tokens * prefix_tokens + new_tokens * (new_tokens + 1) // 2
    return new_tokens, summed


class FlopsCounter:
    """Cumulative FLOPs per role, updated by the loop from the tokens it actually processed.

    ``shapes`` maps a role to the model that runs it (student roles -> student shape,
    teacher roles -> teacher shape). ``as_dict()`` is what goes into metrics.jsonl
    (``flops``) and summary.json.
    """

    def __init__(self, student: ModelShape, teacher: Optional[ModelShape] = None,
                 lora_rank: int = 0, lora_targets: Iterable[str] = ()):
        self.shapes = {role: (teacher if role in TEACHER_ROLES else student) for role in ROLES}
        self.lora = (lora_rank, list(lora_targets))
        """The learner's LoRA (rank, targets); rank 0: full fine-tuning."""
        self.flops = {role: 0.0 for role in ROLES}
        self.tokens = {role: 0 for role in ROLES}

    def add(self, role: str, num_tokens: int, context_tokens: float = 0.0) -> float:
        """Count ``num_tokens`` tokens of ``role``, each attending to ``context_tokens`` keys
        on average; returns the FLOPs added."""
        if role not in self.flops:
            raise ValueError(f"unknown FLOPs role {role!r}; one of {', '.join(ROLES)}")
        shape = self.shapes[role]
        if shape is None:
            raise ValueError(f"role {role!r} needs a teacher shape; pass teacher= to FlopsCounter")
        if role == "learner_train":
            per_token = train_flops_per_token(shape, context_tokens, *self.lora)
        else:
            adapters = lora_params(shape, *self.lora) if role == "learner_recompute" else 0
            per_token = forward_flops_per_token(shape, context_tokens, adapters)
        added = per_token * num_tokens
        self.flops[role] += added
        self.tokens[role] += int(num_tokens)
        return added

    def add_sequences(self, role: str, spans: Iterable[Tuple[int, int]]) -> float:
        """Count exact causal attention for (prefix_tokens, new_tokens) spans, one per sequence."""
        num_tokens, summed = 0, 0
        for prefix, new in spans:
            n, s = causal_context_tokens(prefix, new)
            num_tokens, summed = num_tokens + n, summed + s
        if num_tokens == 0:
            return 0.0
        return self.add(role, num_tokens, context_tokens=summed / num_tokens)

    @property
    def teacher_flops(self) -> float:
        return sum(self.flops[r] for r in TEACHER_ROLES)

    @property
    def student_flops(self) -> float:
        return sum(self.flops[r] for r in STUDENT_ROLES)

    @property
    def total_flops(self) -> float:
        return self.teacher_flops + self.student_flops

    def as_dict(self) -> Dict[str, float]:
        """Per-role cumulative FLOPs plus teacher/student/total sums (metrics.jsonl ``flops``)."""
        out = dict(self.flops)
        out.update(teacher=self.teacher_flops, student=self.student_flops, total=self.total_flops)
        return out

    def state_dict(self) -> dict:
        """For checkpoints: a resumed run continues the same cumulative account."""
        return {"flops": dict(self.flops), "tokens": dict(self.tokens)}

    def load_state_dict(self, state: dict) -> None:
        self.flops.update({k: float(v) for k, v in state["flops"].items()})
        self.tokens.update({k: int(v) for k, v in state["tokens"].items()})


class StepFlops:
    """Counts one training step's FLOPs by role from the tokens actually processed, into a
    FlopsCounter; ``roles`` (opd_megatron.methods.step_roles) says who worked in the step."""

    def __init__(self, counter: FlopsCounter, roles: "StepRoles"):
        self.counter, self.roles = counter, roles

    def add_step(self, rollouts: Sequence["Rollout"], batch: Any = None) -> None:
        """Count the step's rollouts (``batch``, the packed train batch, is not needed)."""
        spans = [(len(r.prompt_ids), len(r.response_ids)) for r in rollouts]
        if self.roles.sampler is not None:
            self.counter.add_sequences(self.roles.sampler, spans)
        if self.roles.teacher_scores:
            # One prefill of each prompt per group (prefix cache), then every response.
            firsts = {r.group_id: len(r.prompt_ids) for r in rollouts}
            self.counter.add_sequences("teacher_scoring", [(0, p) for p in firsts.values()])
            self.counter.add_sequences("teacher_scoring", spans)
        self.counter.add_sequences("learner_train", [(0, p + t) for p, t in spans])

    def as_dict(self) -> Dict[str, float]:
        return self.counter.as_dict()


def opd_flops(student: ModelShape, teacher: ModelShape, num_tokens: float,
              context_tokens: float = DEFAULT_CONTEXT_TOKENS) -> Dict[str, float]:
    """FLOPs of an OPD run over ``num_tokens`` sampled tokens: the student samples (2N),
    trains (6N); the teacher scores them once (2N)."""
    counter = FlopsCounter(student, teacher)
    counter.add("student_sampling", num_tokens, context_tokens)
    counter.add("learner_train", num_tokens, context_tokens)
    counter.add("teacher_scoring", num_tokens, context_tokens)
    return counter.as_dict()


# TML blog "On-Policy Distillation" compute table (student Qwen3-8B-Base, FLOPs counted as
# if the teacher were Qwen3-32B): method -> (AIME'24, teacher FLOPs, student FLOPs).
TML_TABLE = {"SFT-400K": (0.60, 8.5e20, 3.8e20), "SFT-2M": (0.70, 3.4e21, 1.5e21),
             "OPD": (0.70, 8.4e19, 8.2e19)}
TML_OPD_RECIPE_TOKENS = 150 * 512 * 4 * 4096
"""The blog's OPD run: ~150 steps x 512 prompts x 4 samples x <=4096 tokens = 1.26e9."""


def tml_token_counts(context_tokens: float = DEFAULT_CONTEXT_TOKENS) -> Dict[str, Dict[str, float]]:
    """Token counts behind each TML row, derived from its FLOPs and the model shapes.

    SFT rows: the student trained on ``student FLOPs / train_flops_per_token(8B)`` tokens and
    the teacher generated ``teacher FLOPs / forward_flops_per_token(32B)`` tokens (the table
    implies ~1.6x more generated than trained tokens, e.g. filtered samples; taken as
    published). OPD row: the student's sampled+trained tokens are ``student FLOPs / (forward
    + train per token)``, the teacher's scored tokens ``teacher FLOPs / forward``; both should
    equal the recipe's ~1.26e9, which checks the formulas.
    """
    s8, t32 = NAMED_SHAPES["qwen3-8b"], NAMED_SHAPES["qwen3-32b"]
    fwd_s, fwd_t = forward_flops_per_token(s8, context_tokens), forward_flops_per_token(t32, context_tokens)
    out = {}
    for row, (_, teacher_flops, student_flops) in TML_TABLE.items():
        if row == "OPD":
            student_tokens = student_flops / (fwd_s + train_flops_per_token(s8, context_tokens))
        else:
            student_tokens = student_flops / train_flops_per_token(s8, context_tokens)
        out[row] = {"student_tokens": student_tokens, "teacher_tokens": teacher_flops / fwd_t}
    return out


def tml_table(context_tokens: float = DEFAULT_CONTEXT_TOKENS) -> dict:
    """The TML compute-efficiency ratios recomputed with FlopsCounter.

    SFT rows use their derived token counts (teacher_sampling + learner_train); the OPD row
    uses the recipe's token count (student_sampling + learner_train + teacher_scoring). 9x is
    SFT-2M student FLOPs over OPD's total; 30x also counts the teacher sampling of SFT-2M.
    """
    s8, t32 = NAMED_SHAPES["qwen3-8b"], NAMED_SHAPES["qwen3-32b"]
    tokens = tml_token_counts(context_tokens)
    rows = {}
    for row, (acc, pub_teacher, pub_student) in TML_TABLE.items():
        counter = FlopsCounter(s8, t32)
        if row == "OPD":
            for role in ("student_sampling", "learner_train", "teacher_scoring"):
                counter.add(role, TML_OPD_RECIPE_TOKENS, context_tokens)
        else:
            counter.add("teacher_sampling", tokens[row]["teacher_tokens"], context_tokens)
            counter.add("learner_train", tokens[row]["student_tokens"], context_tokens)
        rows[row] = {"aime24": acc, "published_teacher_flops": pub_teacher,
                        "published_student_flops": pub_student,
                        "teacher_flops": counter.teacher_flops,
                        "student_flops": counter.student_flops, "roles": dict(counter.flops), **tokens[row]}
    opd_total = rows["OPD"]["teacher_flops"] + rows["OPD"]["student_flops"]
    sft = rows["SFT-2M"]
    return {"rows": rows, "context_tokens": context_tokens,
            "opd_recipe_tokens": TML_OPD_RECIPE_TOKENS,
            "ce_student_only": sft["student_flops"] / opd_total,
            "ce_with_teacher_sampling": (sft["student_flops"] + sft["teacher_flops"]) / opd_total}


def tml_table_lines(context_tokens: float = DEFAULT_CONTEXT_TOKENS) -> Tuple[List[str], dict]:
    """The TML table as printable lines, plus the data."""
    data = tml_table(context_tokens)
    lines = [f"TML on-policy distillation compute table, recomputed (mean context "
             f"{context_tokens:g} keys/token; student qwen3-8b, teacher qwen3-32b)",
             f"{'method':<10} {'AIME24':>6} {'teacher tok':>11} {'student tok':>11} "
             f"{'teacher FLOPs':>13} {'(blog)':>8} {'student FLOPs':>13} {'(blog)':>8}"]
    for method, r in data["rows"].items():
        lines.append(f"{method:<10} {r['aime24']:>6.0%} {r['teacher_tokens']:>11.3g} "
                     f"{r['student_tokens']:>11.3g} {r['teacher_flops']:>13.3e} "
                     f"{r['published_teacher_flops']:>8.2g} {r['student_flops']:>13.3e} "
                     f"{r['published_student_flops']:>8.2g}")
    lines.append(f"OPD tokens: recipe 150x512x4x4096 = {data['opd_recipe_tokens']:.3g}; derived "
                 "from the blog's FLOPs above (student / teacher)")
    lines.append(f"compute efficiency of OPD vs SFT-2M: {data['ce_student_only']:.1f}x "
                 f"(SFT student FLOPs only; blog 9x), {data['ce_with_teacher_sampling']:.1f}x "
                 "(incl. teacher sampling of the SFT data; blog 30x)")
    return lines, data


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="opd flops", description=__doc__.split("\n")[0])
    p.add_argument("--student", help="student: qwen3-* name or HF dir / config.json")
    p.add_argument("--teacher", help="teacher: qwen3-* name or HF dir / config.json")
    p.add_argument("--tokens", type=float, help="sampled tokens (prompt + response) of the run")
    p.add_argument("--context-tokens", type=float, default=DEFAULT_CONTEXT_TOKENS,
                   help="mean attended keys per token (default 2048: 4K-token sequences)")
    p.add_argument("--table", choices=["tml"], help="print a published table recomputed")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    return p


def cli_main(argv: Sequence[str]) -> int:
    """`opd flops ...`: FLOPs of an OPD run, or the TML compute table recomputed."""
    args = _parser().parse_args(list(argv))
    if args.table == "tml":
        lines, data = tml_table_lines(args.context_tokens)
        print(json.dumps(data, indent=2) if args.json else "\n".join(lines))
        return 0
    if not args.student or args.tokens is None:
        raise ConfigError("opd flops: pass --student NAME --tokens N (and --teacher NAME), "
                          "or --table tml")
    if args.tokens < 0:
        raise ConfigError(f"opd flops: --tokens must be >= 0, got {args.tokens}")
    student = resolve_shape(args.student)
    teacher = resolve_shape(args.teacher) if args.teacher else None
    counter = FlopsCounter(student, teacher)
    counter.add("student_sampling", args.tokens, args.context_tokens)
    counter.add("learner_train", args.tokens, args.context_tokens)
    if teacher is not None:
        counter.add("teacher_scoring", args.tokens, args.context_tokens)
    data = {"student_flops": counter.student_flops, "teacher_flops": counter.teacher_flops,
            "by_role": counter.as_dict(), "student_N": student.flops_params,
            "teacher_N": teacher.flops_params if teacher else None, "tokens": args.tokens,
            "context_tokens": args.context_tokens}
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    print(f"tokens {args.tokens:.3g}, mean context {args.context_tokens:g} keys/token")
    print(f"student {args.student}: N={student.flops_params:.4g} (total params "
          f"{student.total_params:.4g}); 2N sampling + 6N training (+attention) per token")
    print(f"  student FLOPs: {counter.student_flops:.3e}")
    if teacher is not None:
        print(f"teacher {args.teacher}: N={teacher.flops_params:.4g}; 2N prefill (+attention) per token")
        print(f"  teacher FLOPs: {counter.teacher_flops:.3e}")
    print(f"total FLOPs: {counter.total_flops:.3e}")
    return 0


if __name__ == "__main__":
    from opd_megatron.errors import cli_entry

    raise SystemExit(cli_entry(cli_main))
