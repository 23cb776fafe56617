"""Padded output rows are no tokens: never sampled, never in a teacher top-k, never in the
learner's distributions (Qwen3: 151,936 rows for 151,669 tokens; the tiny BPE models: 512 for
479).

The model under test is a tiny BPE Qwen3 made "loud": its padded rows get logits ~5.8 nats
above the best real token at every position, 96% of the mass (checked against a direct HF
forward first, so the test would fail on code that ignores the padding; loud enough that an
unmasked sampler picks padding 24 times in 25, not so loud that the real tokens' share is lost
to rounding). Then a real SGLang server samples and
scores with it, and the Megatron scorer recomputes it; all three must agree with the direct
forward's distribution over the real tokens only.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from opd_megatron.engines import requests as req
from opd_megatron.engines.client import EngineClient
from opd_megatron.types import Rollout

pytestmark = pytest.mark.timeout(600)
TOL = 1e-4


def _loud_padded_model(out: Path) -> Path:
    """Tiny BPE student whose padded rows dominate: every real embedding row gets a large
    coordinate 0 (so the residual stream's coordinate 0 is large and positive everywhere) and
    the padded rows point along it (tied embeddings: they are also the output layer)."""
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    from opd_megatron.models import tiny, tiny_bpe
    from opd_megatron.run.prepare import bpe_training_text

    tiny_bpe.save_random_bpe_model(out, tiny.STUDENT_SHAPE, 5, bpe_training_text())
    num_tokens = len(AutoTokenizer.from_pretrained(out))
    path = out / "model.safetensors"
    state = load_file(str(path))
    emb = state["model.embed_tokens.weight"].clone()
    assert "lm_head.weight" not in state  # tied
    emb[:num_tokens, 0] = 10.0
    emb[num_tokens:] = 0.0
    emb[num_tokens:, 0] = 10.6
    state["model.embed_tokens.weight"] = emb
    save_file(state, str(path), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def loud(tmp_path_factory) -> dict:
    from transformers import AutoTokenizer

    model_dir = _loud_padded_model(tmp_path_factory.mktemp("loud") / "model")
    tok = AutoTokenizer.from_pretrained(model_dir)
    import json

    width = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       return_dict=False)
               for q in ("Simplify 6/8.", "Evaluate 3*9*6 modulo 100.")]
    return {"dir": model_dir, "num_tokens": len(tok), "width": width, "prompts": prompts}


def _hf_logits(model_dir: Path, ids) -> torch.Tensor:
    from tests.engines_helpers import hf_model

    with torch.no_grad():
        return hf_model(model_dir)(torch.tensor([list(ids)])).logits[0].double()


def test_the_padded_rows_would_win_everywhere(loud):
    """The premise: without masking, every position's argmax is a padded row."""
    n = loud["num_tokens"]
    assert loud["width"] > n
    logits = _hf_logits(loud["dir"], loud["prompts"][0])
    assert bool((logits.argmax(-1) >= n).all())
    assert float((logits[:, n:].max(-1).values - logits[:, :n].max(-1).values).min()) > 5
    assert float(torch.softmax(logits, -1)[:, n:].sum(-1).min()) > 0.9


# -- pure request/answer functions ---------------------------------------------------------

def test_generate_payload_bans_the_padded_ids():
    body = req.generate_payload([1, 2], samples_per_prompt=1, max_new_tokens=4, temperature=1.0,
                                top_p=1.0, top_k=-1, seed=None, banned_ids=range(5, 8))
    assert body["sampling_params"]["logit_bias"] == {"5": req.PADDED_LOGIT_BIAS, "6": req.PADDED_LOGIT_BIAS,
                                                     "7": req.PADDED_LOGIT_BIAS}
    plain = req.generate_payload([1, 2], samples_per_prompt=1, max_new_tokens=4, temperature=1.0,
                                 top_p=1.0, top_k=-1, seed=None)
    assert "logit_bias" not in plain["sampling_params"]


def test_real_token_row_drops_padding_and_renormalises():
    import math

    row = [[math.log(0.5), 9, None], [math.log(0.3), 1, None], [math.log(0.15), 2, None],
           [math.log(0.05), 8, None]]  # ids 8, 9 are padding for num_tokens = 8
    kept, shift = req.real_token_row(row, 8)
    assert [x[1] for x in kept] == [1, 2]
    assert shift == pytest.approx(math.log(0.45))
    assert [math.exp(x[0]) for x in kept] == pytest.approx([0.3 / 0.45, 0.15 / 0.45])
    assert req.real_token_row(row[1:3], 8) == (row[1:3], 0.0)
    # padding holding all but 1e-300 of the mass: 1 - mass is lost to rounding, so the real
    # entries are renormalised over the real mass the row shows (they never sum above 1)
    loud = [[-1e-300, 9, None], [-700.0, 1, None], [-701.0, 2, None]]
    kept, _ = req.real_token_row(loud, 8)
    assert sum(math.exp(x[0]) for x in kept) == pytest.approx(1.0)
    assert kept[0][0] - kept[1][0] == pytest.approx(1.0)


def test_client_asks_for_the_padded_rows_on_top_of_top_k():
    client = EngineClient(["http://127.0.0.1:1"], full_vocab_size=479, logits_width=512)
    assert list(client.padded_ids) == list(range(479, 512))
    assert client._top_logprobs_num(1.0, 8) == 8 + 33
    assert client._top_logprobs_num(1.0, 0) == 0
    assert client._top_logprobs_num(0.5, 8) == 512  # every row, the padded ones dropped after
    assert list(EngineClient(["http://127.0.0.1:1"], full_vocab_size=479).padded_ids) == []


# -- a real SGLang server on the loud model ------------------------------------------------

@pytest.fixture(scope="module")
def loud_server(loud, tmp_path_factory):
    from tests.engines_helpers import start_server

    group = start_server("student", loud["dir"], tmp_path_factory.mktemp("loud-logs"))
    yield group
    group.stop()


def _real_logprobs(loud, prompt, response) -> torch.Tensor:
    """[T, num_tokens] direct-forward log-distribution over the real tokens only."""
    logits = _hf_logits(loud["dir"], list(prompt) + list(response))
    rows = logits[len(prompt) - 1: len(prompt) - 1 + len(response), : loud["num_tokens"]]
    return torch.log_softmax(rows, -1)


def test_sampling_never_returns_a_padded_id(loud, loud_server):
    client = EngineClient(loud_server.request_urls, full_vocab_size=loud["num_tokens"],
                          logits_width=loud["width"])
    rollouts = client.generate(loud["prompts"], samples_per_prompt=4, max_new_tokens=24, seed=7)
    tokens = [t for r in rollouts for t in r.response_ids]
    assert len(tokens) >= 8 * 2 and max(tokens) < loud["num_tokens"]
    # the sampler's logprobs are over the real tokens, as the learner's are
    worst = max(float((torch.tensor(r.sampler_logprobs, dtype=torch.float64)
                       - _real_logprobs(loud, r.prompt_ids, r.response_ids)
                       .gather(1, torch.tensor(r.response_ids).view(-1, 1))[:, 0]).abs().max())
                for r in rollouts)
    assert worst < TOL, worst
    # control: without the ban the same server samples padding nearly always
    unbanned = EngineClient(loud_server.request_urls).generate(loud["prompts"], max_new_tokens=8,
                                                               seed=7, ignore_eos=True)
    padded = [t >= loud["num_tokens"] for r in unbanned for t in r.response_ids]
    assert len(padded) == 16 and sum(padded) >= 12


def test_teacher_top_k_holds_real_tokens_renormalised(loud, loud_server):
    client = EngineClient(loud_server.request_urls, full_vocab_size=loud["num_tokens"],
                          logits_width=loud["width"])
    prompt = loud["prompts"][1]
    response = [15, 16, 17, 3, 4, 476]
    rollout = Rollout(prompt_ids=prompt, response_ids=response, sampler_logprobs=[0.0] * 6)
    client.score([rollout], top_k=8)
    ref = _real_logprobs(loud, prompt, response)
    ids = torch.tensor(rollout.teacher_topk_ids)
    assert ids.shape == (6, 8) and int(ids.max()) < loud["num_tokens"]
    assert torch.equal(ids, ref.topk(8, -1).indices)  # the real top-8, in order
    assert float((torch.tensor(rollout.teacher_topk_logprobs, dtype=torch.float64)
                  - ref.gather(1, ids)).abs().max()) < TOL
    sampled = ref.gather(1, torch.tensor(response).view(-1, 1))[:, 0]
    assert float((torch.tensor(rollout.teacher_logprobs, dtype=torch.float64) - sampled).abs().max()) < TOL


# -- the Megatron scorer -------------------------------------------------------------------

def test_megatron_scorer_masks_the_padded_rows(loud):
    from opd_megatron.config.schema import ModelConfig, ParallelConfig
    from opd_megatron.learner import FrozenTeacher
    from opd_megatron.types import TrainBatch

    prompt, response = loud["prompts"][0], [15, 16, 17, 3, 476]
    tokens = torch.tensor([list(prompt) + response])
    mask = torch.zeros_like(tokens, dtype=torch.float32)
    mask[0, len(prompt):] = 1.0
    batch = TrainBatch(token_ids=tokens, response_mask=mask, sampler_logprobs=torch.zeros_like(mask),
                       advantages=torch.zeros_like(mask), group_ids=torch.zeros(1, dtype=torch.long))
    scorer = FrozenTeacher(ModelConfig(path=str(loud["dir"])), ParallelConfig(microbatch_tokens=4096),
                           num_tokens=loud["num_tokens"])
    ref = _real_logprobs(loud, prompt, response)
    ours = scorer.logprobs(batch)[0, len(prompt):].double()
    assert float((ours - ref.gather(1, torch.tensor(response).view(-1, 1))[:, 0]).abs().max()) < TOL
    logits = scorer.logits(batch)
    assert logits.shape[-1] == loud["num_tokens"]
