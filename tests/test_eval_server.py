"""`opd eval` end to end against a real SGLang server (the engines' tiny student).

Greedy responses through the eval's generate_fn must be exactly HF transformers' greedy
continuations of the same prompts: checks prompt encoding, grouping of samples and decoding.
"""

from __future__ import annotations

import json

import pytest
import torch

from opd_megatron.evaluation import SamplingParams, arithmetic_benchmark
from opd_megatron.evaluation.opd_eval import cli_main, engine_generate_fn
from opd_megatron.models.tiny import build_tokenizer
from tests.engines_helpers import hf_model

pytestmark = pytest.mark.slow  # starts one SGLang server (~30 s)

NUM_PROMPTS, MAX_NEW_TOKENS = 6, 12


def test_greedy_eval_through_server_matches_hf(student_server, engine_models, tmp_path, capsys):
    url = student_server.url
    tok = build_tokenizer()
    generate = engine_generate_fn(url, tok, "none")
    bench = arithmetic_benchmark(NUM_PROMPTS)
    prompts = [p.prompt for p in bench.problems]
    got = generate(prompts, 2, SamplingParams(temperature=0.0, num_samples=2, max_new_tokens=MAX_NEW_TOKENS))
    assert len(got) == NUM_PROMPTS and all(len(g) == 2 and g[0] == g[1] for g in got)
    model = hf_model(engine_models["student"])
    for prompt, responses in zip(prompts, got):
        ids = torch.tensor([tok(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, do_sample=False, max_new_tokens=MAX_NEW_TOKENS,
                                 eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        expected = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        assert responses[0] == expected

    result_path = tmp_path / "eval.json"
    assert cli_main(["--benchmark", "arithmetic", "--server-url", url, "--limit", str(NUM_PROMPTS),
                     "--samples", "2", "--temperature", "1.0", "--max-new-tokens", str(MAX_NEW_TOKENS),
                     "--output", str(result_path)]) == 0
    data = json.loads(result_path.read_text())
    assert data["num_problems"] == NUM_PROMPTS and data["num_samples"] == 2
    assert len(data["num_correct"]) == NUM_PROMPTS and 0.0 <= data["avg_at_k"] <= 1.0
    assert "arithmetic: 6 problems x 2 samples" in capsys.readouterr().out
