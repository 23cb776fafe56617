"""SGLang /generate request bodies and the parsing of their answers, as pure functions.

Kept apart from the HTTP client so the alignment rules (the classic off-by-one of teacher
scoring) are in one short place and unit-testable without a server.

Alignment facts of SGLang 0.5.23 (measured, see tests/test_engines_scoring.py):
- ``meta_info.input_token_logprobs`` with ``logprob_start_len=s`` lists the tokens
  ``input_ids[s:]`` as ``[logprob, token_id, text]``; entry i is ``log p(input_ids[s+i] |
  input_ids[:s+i])`` except entry 0, whose logprob is null. ``input_top_logprobs[i]`` is the
  top-k of that same distribution (the one predicting ``input_ids[s+i]``).
- So scoring a response that starts at position P uses ``s = P - 1``: entry 0 is the last
  prompt token (null, dropped), entry t + 1 scores response token t. ``s = P`` would lose
  response token 0; ``s = 0`` also works but disables the prefix cache for the prompt.
- The radix cache can reuse at most ``s`` tokens of a logprob request, so ``s = P - 1`` lets
  the teacher reuse the prompt prefilled by an earlier sample of the same group.
- Input logprobs are always those of the temperature-1 distribution (SGLang ignores the
  request temperature for them); output (sampled) logprobs are temperature-scaled.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from opd_megatron.engines.http import EngineRequestError
from opd_megatron.types import Rollout


PADDED_LOGIT_BIAS = -1.0e9
"""Added to the logits of output rows that are no token (a padded embedding): finite, as JSON
needs, and far enough below any real logit that exp() of the difference is exactly 0."""


def generate_payload(prompt_ids: List[int], *, samples_per_prompt: int, max_new_tokens: int,
                     temperature: float, top_p: float, top_k: int,
                     seed: Optional[int], ignore_eos: bool = False,
                     stop_token_ids: Optional[List[int]] = None,
                     banned_ids: Sequence[int] = ()) -> Dict[str, Any]:
    """One request for all G samples of a prompt (``n=G``).

    ``banned_ids`` (the padded rows of the output layer) get ``PADDED_LOGIT_BIAS``: SGLang
    adds ``logit_bias`` before sampling and before the sampled tokens' logprobs, so they are
    never sampled and the returned logprobs are over the real tokens, as the learner's are.

    ``stop_token_ids`` end a sample besides the model's own eos (SGLang keeps the stop token
    in ``output_ids``, as it does the eos): the recipe's ``data.eos_token`` when the student's
    eos is another token.

    ``n=G`` makes SGLang prefill the prompt once and fork it G times (measured: every sample
    reports ``cached_tokens = P - 1``); G separate requests prefill it up to G times.
    """
    params: Dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "top_k": top_k,
        "n": samples_per_prompt,
    }
    if ignore_eos:
        params["ignore_eos"] = True  # fixed-length responses (benchmarks, tests)
    if stop_token_ids:
        params["stop_token_ids"] = list(stop_token_ids)
    if banned_ids:
        params["logit_bias"] = {str(i): PADDED_LOGIT_BIAS for i in banned_ids}
    if seed is not None:
        # Honoured by SGLang with --enable-deterministic-inference (GPU attention backends)
        # and, on CPU, by the sgl_kernel shim's seeded sampling (OPD_SGLANG_SEEDED_SAMPLING=1,
        # set by the launcher): the sample is then fixed by (seed, position), whatever the
        # batch or the server's history.
        params["sampling_seed"] = seed
    return {"input_ids": prompt_ids, "sampling_params": params, "return_logprob": True}


BATCH_DEFAULTS = {"return_logprob": False, "logprob_start_len": -1, "top_logprobs_num": 0}


def batch_payload(payloads: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Several single /generate bodies (each n=1) as one SGLang batch request (list fields)."""
    extra = set().union(*(p.keys() for p in payloads)) - {"input_ids", "sampling_params", *BATCH_DEFAULTS}
    if extra:
        raise EngineRequestError(f"cannot batch /generate fields {sorted(extra)}")
    body: Dict[str, Any] = {"input_ids": [p["input_ids"] for p in payloads],
                            "sampling_params": [p["sampling_params"] for p in payloads]}
    for key, default in BATCH_DEFAULTS.items():
        body[key] = [p.get(key, default) for p in payloads]
    return body


def _weight_version(meta: Dict[str, Any]) -> int:
    raw = meta.get("weight_version", "0")
    try:
        return int(raw)
    except (TypeError, ValueError):
        return 0  # SGLang's initial version is the string "default"


def _finish_reason(meta: Dict[str, Any]) -> str:
    reason = meta.get("finish_reason") or {}
    kind = reason.get("type", "length") if isinstance(reason, dict) else str(reason)
    return "length" if kind == "length" else ("stop" if kind in ("stop", "eos") else kind)


def parse_generate(answer: Any, prompt_ids: List[int], group_id: int,
                   num_samples: int, url: str) -> List[Rollout]:
    """Rollouts of one prompt from a /generate answer (a list when n > 1)."""
    items = answer if isinstance(answer, list) else [answer]
    if len(items) != num_samples:
        raise EngineRequestError(f"SGLang server {url} returned {len(items)} samples, "
                                 f"expected {num_samples}")
    rollouts = []
    for item in items:
        meta = item["meta_info"]
        triples = meta.get("output_token_logprobs") or []
        response_ids = list(item.get("output_ids", [t[1] for t in triples]))
        if [t[1] for t in triples] != response_ids:
            raise EngineRequestError(f"SGLang server {url}: output_token_logprobs do not "
                                     "match output_ids (cannot align sampler logprobs)")
        rollouts.append(Rollout(
            prompt_ids=list(prompt_ids), response_ids=response_ids,
            sampler_logprobs=[float(t[0]) for t in triples],
            finish_reason=_finish_reason(meta), weight_version=_weight_version(meta),
            group_id=group_id,
        ))
    return rollouts


def score_payload(rollout: Rollout, *, top_logprobs_num: int) -> Dict[str, Any]:
    """Prefill prompt + response once, logprobs from the last prompt token on (see module doc)."""
    num_prompt_tokens = len(rollout.prompt_ids)
    if num_prompt_tokens == 0:
        raise EngineRequestError("cannot score a rollout with an empty prompt")
    payload: Dict[str, Any] = {
        "input_ids": list(rollout.prompt_ids) + list(rollout.response_ids),
        "sampling_params": {"max_new_tokens": 0, "temperature": 1.0},
        "return_logprob": True,
        "logprob_start_len": num_prompt_tokens - 1,
    }
    if top_logprobs_num > 0:
        payload["top_logprobs_num"] = top_logprobs_num
    return payload


def _log_softmax_scaled(logprobs: List[float], temperature: float) -> List[float]:
    """log softmax(logits / T) from the full temperature-1 log-distribution."""
    scaled = [lp / temperature for lp in logprobs]
    top = max(scaled)
    log_norm = top + math.log(sum(math.exp(x - top) for x in scaled))
    return [x - log_norm for x in scaled]


def _rescaled_row(top_row: List[List[Any]], token_id: int, temperature: float,
                  top_k: int) -> Tuple[float, List[int], List[float]]:
    """Teacher logprob of ``token_id`` and its top-k at ``temperature`` from a full-vocab row."""
    ids = [int(entry[1]) for entry in top_row]
    scaled = _log_softmax_scaled([float(entry[0]) for entry in top_row], temperature)
    by_id = dict(zip(ids, scaled))
    order = sorted(range(len(ids)), key=lambda i: -scaled[i])[:top_k]
    return by_id[token_id], [ids[i] for i in order], [scaled[i] for i in order]


def real_token_row(row: List[List[Any]], num_tokens: int) -> Tuple[List[List[Any]], float]:
    """A top-logprob row without the padded ids (>= ``num_tokens``), renormalised over the real
    tokens: every logprob minus ``shift = log(1 - padded mass seen)``, returned too.

    Exact when every padded id with mass is in the row (the client asks for ``top_k + number
    of padded rows`` entries, so the row also keeps at least ``top_k`` real ones). Where the
    padded rows hold so nearly all the mass that ``1 - mass`` is lost to rounding, the shift is
    the real mass the row shows (a lower bound), so the real entries still sum to at most 1."""
    real = [float(x[0]) for x in row if int(x[1]) < num_tokens]
    padded_mass = sum(math.exp(float(x[0])) for x in row if int(x[1]) >= num_tokens)
    if padded_mass == 0.0:
        return [list(x) for x in row], 0.0
    complement = math.log1p(-padded_mass) if padded_mass < 1.0 - 1e-6 else -math.inf
    top = max(real, default=-math.inf)
    seen = top + math.log(sum(math.exp(lp - top) for lp in real)) if real else -math.inf
    shift = max(complement, seen)
    return [[float(x[0]) - shift, *x[1:]] for x in row if int(x[1]) < num_tokens], shift


def _same_scored_ids(got: List[int], expected: List[int]) -> bool:
    """SGLang reports ids >= vocab_size - 1 as 0 in input_token_logprobs (it clips "padded
    image hashes"); the logprob values are still those of the real token (measured). So a
    reported 0 matches any id; a shift by one position still fails on the other ids."""
    return len(got) == len(expected) and all(g == e or g == 0 for g, e in zip(got, expected))


def parse_score(answer: Dict[str, Any], rollout: Rollout, *, temperature: float, top_k: int,
                full_vocab_size: Optional[int], url: str) -> None:
    """Fill ``rollout.teacher_*`` so that index t scores response token t.

    ``temperature != 1`` needs the full distribution (``full_vocab_size`` entries per
    position, requested by the caller) because SGLang returns input logprobs at T = 1 only.
    """
    meta = answer["meta_info"]
    entries = meta.get("input_token_logprobs") or []
    response_ids = list(rollout.response_ids)
    got_ids = [int(e[1]) for e in entries]
    # SGLang 0.5.23 reports ids >= the model's vocab_size - 1 as 0 in input_token_logprobs
    # (scheduler_components/logprob_result_processor.py); that is the config's (padded) size,
    # not the tokenizer's, so the comparison accepts a reported 0 for any id.
    expected_ids = [rollout.prompt_ids[-1]] + response_ids
    if not _same_scored_ids(got_ids, expected_ids):
        raise EngineRequestError(
            f"SGLang server {url}: scored tokens {got_ids[:8]}... do not match last prompt "
            f"token + response {expected_ids[:8]}... (teacher logprobs would be misaligned)")
    rescale = temperature != 1.0
    need_rows = top_k > 0 or rescale
    rows = (meta.get("input_top_logprobs") or [])[1:] if need_rows else []
    if need_rows and len(rows) != len(response_ids):
        raise EngineRequestError(f"SGLang server {url} returned {len(rows)} top-logprob rows "
                                 f"for {len(response_ids)} response tokens")
    shifts = [0.0] * len(response_ids)
    if full_vocab_size and rows:  # padded output rows are no tokens: drop, renormalise
        split = [real_token_row(row, full_vocab_size) for row in rows]
        rows, shifts = [row for row, _ in split], [shift for _, shift in split]
    if not rescale:
        rollout.teacher_logprobs = [float(e[0]) - sh for e, sh in zip(entries[1:], shifts)]
        if top_k > 0:
            rollout.teacher_topk_ids = [[int(x[1]) for x in row[:top_k]] for row in rows]
            rollout.teacher_topk_logprobs = [[float(x[0]) for x in row[:top_k]] for row in rows]
        return
    if any(len(row) != full_vocab_size for row in rows):
        raise EngineRequestError(f"SGLang server {url} returned fewer than the full "
                                 f"{full_vocab_size} logprobs needed for temperature {temperature}")
    done = [_rescaled_row(row, tok, temperature, max(top_k, 1))
            for row, tok in zip(rows, response_ids)]
    rollout.teacher_logprobs = [d[0] for d in done]
    if top_k > 0:
        rollout.teacher_topk_ids = [d[1] for d in done]
        rollout.teacher_topk_logprobs = [d[2] for d in done]
