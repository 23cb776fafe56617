"""Real SGLang servers on CPU (fp32) against a direct HF transformers forward (eager, fp32).

Two session servers: the student (sampling, then weight sync by every transport that runs
here) and the teacher (scoring). Tolerance 1e-4 nats; measured max differences are printed
(run with -s) and were ~3e-7 (sampling) and ~1e-6 (scoring, top-k) in fp32.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from tests.engines_helpers import free_port, hf_response_logprobs, token_logprobs
from opd_megatron.engines.client import EngineClient
from opd_megatron.engines.http import EngineRequestError
from opd_megatron.errors import ConfigError
from opd_megatron.engines.weight_sync import (DiskSync, DistributedSync, TensorSync,
                                              served_weight_version)
from opd_megatron.engines.weight_sync.tensor import serialize_named_tensors

# Registered as a plugin so the session-scoped servers are shared by all engine test modules.
pytestmark = pytest.mark.timeout(600)
FP32_TOL = 1e-4
VOCAB_SIZE = 21
# Prompts of different lengths (the arithmetic task's format), with BOS.
PROMPTS = [[2, 11, 14, 4, 15, 8, 15], [2, 6, 13, 4, 15], [2, 9, 12, 3, 15, 5, 13, 10, 14, 7, 15]]


def _max_diff(values, reference: torch.Tensor) -> float:
    return (torch.tensor(values, dtype=torch.float64) - reference).abs().max().item()


def _sampler_diff(rollouts, model_dir, temperature=1.0) -> float:
    return max(_max_diff(r.sampler_logprobs, token_logprobs(
        hf_response_logprobs(model_dir, r.prompt_ids, r.response_ids, temperature),
        r.response_ids)) for r in rollouts)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_sampler_logprobs_match_direct_forward(student_server, engine_models, temperature):
    client = EngineClient(student_server.request_urls)
    rollouts = client.generate(PROMPTS, samples_per_prompt=3, max_new_tokens=16,
                               temperature=temperature)
    assert len(rollouts) == 9
    assert [r.group_id for r in rollouts] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for r in rollouts:
        assert r.prompt_ids == PROMPTS[r.group_id]
        assert len(r.response_ids) == len(r.sampler_logprobs) >= 1
        assert r.finish_reason in ("stop", "length")
        if r.finish_reason == "stop":
            assert r.response_ids[-1] == 1  # the sampled EOS is part of the response
        else:
            assert len(r.response_ids) == 16
    diff = _sampler_diff(rollouts, engine_models["student"], temperature)
    print(f"sampler vs HF eager fp32, T={temperature}: max |dlogprob| = {diff:.2e}")
    assert diff < FP32_TOL
    # The sampler logprobs are of the temperature-scaled distribution (types.py convention).
    if temperature != 1.0:
        assert _sampler_diff(rollouts, engine_models["student"], 1.0) > 1e-3


def test_teacher_scoring_aligned_with_direct_forward(teacher_server, engine_models):
    student_like = [  # responses of different lengths, 2 per prompt (G = 2), incl. an EOS
        ([2, 11, 14, 4, 15], [8, 15, 3, 16, 9, 1]),
        ([2, 11, 14, 4, 15], [8, 13, 20, 3]),  # 20 = vocab_size - 1: SGLang reports its id as 0
        ([2, 6, 13, 4, 15, 8, 12, 5, 15], [17, 10]),
        ([2, 6, 13, 4, 15, 8, 12, 5, 15], [17, 9, 9, 9, 9, 9, 9, 1]),
    ]
    from opd_megatron.types import Rollout

    rollouts = [Rollout(prompt_ids=p, response_ids=r, sampler_logprobs=[0.0] * len(r),
                        group_id=i // 2) for i, (p, r) in enumerate(student_like)]
    client = EngineClient(teacher_server.request_urls, min_shared_prompt_tokens=1)
    client.post_each("/flush_cache", {})
    client.score(rollouts, top_k=VOCAB_SIZE)
    worst, worst_topk = 0.0, 0.0
    for r in rollouts:
        full = hf_response_logprobs(engine_models["teacher"], r.prompt_ids, r.response_ids)
        assert len(r.teacher_logprobs) == len(r.response_ids)
        worst = max(worst, _max_diff(r.teacher_logprobs, token_logprobs(full, r.response_ids)))
        ids = torch.tensor(r.teacher_topk_ids)
        assert ids.shape == (len(r.response_ids), VOCAB_SIZE)
        assert sorted(ids[0].tolist()) == list(range(VOCAB_SIZE))  # K = V: full distribution
        worst_topk = max(worst_topk, _max_diff(r.teacher_topk_logprobs, full.gather(1, ids)))
        # off by one would compare with the neighbour position: make sure that is detectable
        shifted = token_logprobs(full[1:], r.response_ids[:-1]) if len(r.response_ids) > 1 else None
        if shifted is not None:
            assert _max_diff(r.teacher_logprobs[:-1], shifted) > 1e-3
    print(f"teacher scoring vs HF eager fp32: token {worst:.2e}, top-{VOCAB_SIZE} {worst_topk:.2e}")
    assert worst < FP32_TOL and worst_topk < FP32_TOL
    # Followers of each group reuse the prompt their leader put in the radix cache.
    assert client.stats.cached_tokens >= (5 - 1) + (9 - 1)


def test_teacher_scoring_at_temperature(teacher_server, engine_models):
    from opd_megatron.types import Rollout

    rollout = Rollout(prompt_ids=[2, 9, 12, 3, 15], response_ids=[5, 13, 10, 1],
                      sampler_logprobs=[0.0] * 4)
    client = EngineClient(teacher_server.request_urls, full_vocab_size=VOCAB_SIZE)
    client.score([rollout], temperature=0.5, top_k=3)
    full = hf_response_logprobs(engine_models["teacher"], rollout.prompt_ids,
                                rollout.response_ids, temperature=0.5)
    reference = token_logprobs(full, rollout.response_ids)
    assert _max_diff(rollout.teacher_logprobs, reference) < FP32_TOL
    top = full.topk(3, dim=-1)
    assert rollout.teacher_topk_ids == top.indices.tolist()
    assert _max_diff(rollout.teacher_topk_logprobs, top.values) < FP32_TOL


def _assert_serves(client, model_dir, other_dir, version):
    rollouts = client.generate(PROMPTS[:2], samples_per_prompt=2, max_new_tokens=12)
    assert {r.weight_version for r in rollouts} == {version}
    new_diff = _sampler_diff(rollouts, model_dir)
    old_diff = _sampler_diff(rollouts, other_dir)
    print(f"v{version}: max diff to pushed weights {new_diff:.2e}, to previous {old_diff:.2e}")
    assert new_diff < FP32_TOL < 1e-2 < old_diff
    assert set(served_weight_version(EngineClient(client.urls)).values()) == {str(version)}


def test_weight_sync_transports_change_served_logprobs(student_server, engine_models, tmp_path):
    """tensor -> v1 (student_v2 weights), disk -> v2 (back to student), gloo broadcast -> v3."""
    servers = EngineClient(student_server.server_urls)
    requests = EngineClient(student_server.request_urls)
    v1 = load_file(str(engine_models["student_v2"] / "model.safetensors"))
    v0 = load_file(str(engine_models["student"] / "model.safetensors"))

    TensorSync(servers).push(v1, version=1)
    _assert_serves(requests, engine_models["student_v2"], engine_models["student"], 1)

    disk = DiskSync(servers, base_model_dir=engine_models["student"], staging_dir=tmp_path)
    disk.push(v0, version=2)
    assert (tmp_path / "v2" / "config.json").is_file()
    _assert_serves(requests, engine_models["student"], engine_models["student_v2"], 2)

    # The NCCL transport's code path, driven with gloo on CPU (NCCL itself needs GPUs).
    dist = DistributedSync(servers, master_address="127.0.0.1", master_port=free_port(),
                           tp_sizes=[1], backend="gloo", device="cpu", timeout_s=60.0)
    try:
        dist.push(v1, version=3)
        _assert_serves(requests, engine_models["student_v2"], engine_models["student"], 3)
    finally:
        dist.close()
        TensorSync(servers).push(v0, version=0)  # other tests expect the original weights


def test_push_after_a_writer_died_mid_push(student_server, engine_models, capsys):
    """A learner SIGKILLed inside a push leaves the server's weight-update session open (and part
    of the new weights loaded); the next push closes that session, says so, and loads all weights.
    """
    servers = EngineClient(student_server.server_urls)
    requests = EngineClient(student_server.request_urls)
    v1 = load_file(str(engine_models["student_v2"] / "model.safetensors"))
    v0 = load_file(str(engine_models["student"] / "model.safetensors"))
    url = student_server.server_urls[0]
    sync = TensorSync(servers)
    # What the dead writer did: begin, then one tensor of the other weights, and no end.
    servers.post_to(url, "/begin_weight_update", {})
    with pytest.raises(EngineRequestError, match="already open"):
        servers.post_to(url, "/begin_weight_update", {})
    try:
        name = "model.embed_tokens.weight"
        servers.post_to(url, "/update_weights_from_tensor", {
            "serialized_named_tensors": [serialize_named_tensors([(name, v1[name].contiguous())])],
            "flush_cache": True, "weight_version": None})
        sync.push(v0, version=7)
        assert "had a weight-update session left open" in capsys.readouterr().out
        _assert_serves(requests, engine_models["student"], engine_models["student_v2"], 7)
    finally:
        TensorSync(servers).push(v0, version=0)


def test_streamed_samples_come_as_they_finish_and_equal_the_batch_request(student_server):
    """astream: the same requests as generate (one batched /generate per server), sent streamed,
    so each sample is yielded when it ends: the same rollouts bit for bit, shorter ones first."""
    import asyncio
    from collections import Counter

    client = EngineClient(student_server.request_urls)
    prompts, kw = PROMPTS * 6, dict(samples_per_prompt=2, max_new_tokens=16, seed=5)
    plain = client.generate(prompts, **kw)
    # End samples at the two tokens the model samples most, so lengths differ within the batch.
    stop = [t for t, _ in Counter(t for r in plain for t in r.response_ids[:-1]).most_common(2)]
    batch = client.generate(prompts, stop_token_ids=stop, **kw)

    async def collect():
        return [r async for r in client.astream(prompts, stop_token_ids=stop, **kw)]

    def fields(r):
        return r.group_id, r.response_ids, r.sampler_logprobs, r.finish_reason, r.weight_version

    arrived = asyncio.run(collect())
    assert sorted(k for k, _ in arrived) == list(range(len(batch)))
    assert [fields(r) for _, r in sorted(arrived, key=lambda kr: kr[0])] == [fields(r) for r in batch]
    lengths = [len(r.response_ids) for _, r in arrived]
    print("streamed lengths in arrival order:", lengths)
    assert len(set(lengths)) > 2, lengths
    half = len(lengths) // 2
    assert sum(lengths[:half]) / half < sum(lengths[half:]) / (len(lengths) - half), lengths
    with pytest.raises(ConfigError, match="need a seed"):
        asyncio.run(client.astream(prompts, samples_per_prompt=2, max_new_tokens=4).__anext__())
