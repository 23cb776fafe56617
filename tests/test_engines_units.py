"""Engine pieces that need no server: request shapes, alignment parsing, errors, the shims."""

from __future__ import annotations

import time

import pytest
import torch

from opd_megatron.config.schema import EngineRoleConfig, EnginesConfig, ModelConfig
from opd_megatron.engines import requests as req
from opd_megatron.engines.client import EngineClient
from opd_megatron.engines.http import EngineRequestError, EngineUnavailable, RetryPolicy
from opd_megatron.engines.launcher import build_server_command, launch_engines, validate_role
from opd_megatron.errors import ConfigError
from opd_megatron.types import Rollout


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_score_payload_starts_logprobs_at_last_prompt_token():
    r = Rollout(prompt_ids=[2, 5, 6], response_ids=[7, 8], sampler_logprobs=[0.0, 0.0])
    payload = req.score_payload(r, top_logprobs_num=0)
    assert payload["input_ids"] == [2, 5, 6, 7, 8]
    assert payload["logprob_start_len"] == 2
    assert payload["sampling_params"]["max_new_tokens"] == 0
    assert "top_logprobs_num" not in payload


def _score_answer(prompt, response, logprobs, top=None):
    entries = [[None, prompt[-1], None]] + [[lp, t, None] for lp, t in zip(logprobs, response)]
    meta = {"input_token_logprobs": entries, "cached_tokens": 0, "prompt_tokens": 5}
    if top is not None:
        meta["input_top_logprobs"] = [None] + top
    return {"meta_info": meta}


def test_parse_score_aligns_response_tokens_and_topk():
    r = Rollout(prompt_ids=[2, 5, 6], response_ids=[7, 8], sampler_logprobs=[0.0, 0.0])
    top = [[[-0.1, 7, None], [-2.5, 3, None]], [[-0.3, 4, None], [-1.4, 8, None]]]
    req.parse_score(_score_answer([2, 5, 6], [7, 8], [-0.1, -1.4], top), r, temperature=1.0,
                    top_k=2, full_vocab_size=None, url="u")
    assert r.teacher_logprobs == [-0.1, -1.4]
    assert r.teacher_topk_ids == [[7, 3], [4, 8]]
    assert r.teacher_topk_logprobs == [[-0.1, -2.5], [-0.3, -1.4]]


def test_parse_score_accepts_last_vocab_id_reported_as_zero():
    """SGLang reports the id vocab_size - 1 as 0 in input_token_logprobs (values are right)."""
    r = Rollout(prompt_ids=[2, 5], response_ids=[20, 8], sampler_logprobs=[0.0, 0.0])
    answer = _score_answer([2, 5], [0, 8], [-0.7, -1.4])
    req.parse_score(answer, r, temperature=1.0, top_k=0, full_vocab_size=21, url="u")
    assert r.teacher_logprobs == [-0.7, -1.4]


def test_parse_score_refuses_misaligned_answer():
    r = Rollout(prompt_ids=[2, 5, 6], response_ids=[7, 8], sampler_logprobs=[0.0, 0.0])
    answer = _score_answer([2, 5], [6, 7], [-0.1, -1.4])  # shifted by one token
    with pytest.raises(EngineRequestError, match="misaligned"):
        req.parse_score(answer, r, temperature=1.0, top_k=0, full_vocab_size=None, url="u")


def test_parse_score_rescales_full_distribution_for_temperature():
    logits = torch.tensor([[1.0, 3.0, -2.0, -1.0], [0.5, 0.0, 2.0, -3.0]])
    logp = torch.log_softmax(logits, -1)
    top = [[[logp[i, j].item(), j, None] for j in range(4)] for i in range(2)]
    r = Rollout(prompt_ids=[0], response_ids=[1, 2], sampler_logprobs=[0.0, 0.0])
    answer = _score_answer([0], [1, 2], [logp[0, 1].item(), logp[1, 2].item()], top)
    req.parse_score(answer, r, temperature=0.5, top_k=1, full_vocab_size=4, url="u")
    ref = torch.log_softmax(logits / 0.5, -1)
    assert r.teacher_logprobs == pytest.approx([ref[0, 1].item(), ref[1, 2].item()], abs=1e-6)
    assert r.teacher_topk_ids == [[1], [2]]


def test_temperature_scoring_without_vocab_size_is_a_config_error():
    client = EngineClient(["http://127.0.0.1:1"])
    with pytest.raises(ConfigError, match="teacher_temperature"):
        client.score([Rollout([2], [3], [0.0])], temperature=0.7)


def test_parse_generate_reads_ids_logprobs_finish_and_version():
    answer = [{"output_ids": [4, 1], "meta_info": {
        "output_token_logprobs": [[-0.5, 4, None], [-0.2, 1, None]],
        "finish_reason": {"type": "stop", "matched": 1}, "weight_version": "3"}},
        {"output_ids": [9], "meta_info": {"output_token_logprobs": [[-1.0, 9, None]],
                                         "finish_reason": {"type": "length", "length": 1},
                                         "weight_version": "default"}}]
    rollouts = req.parse_generate(answer, [2, 5], group_id=7, num_samples=2, url="u")
    assert [(r.response_ids, r.sampler_logprobs, r.finish_reason, r.weight_version, r.group_id)
            for r in rollouts] == [([4, 1], [-0.5, -0.2], "stop", 3, 7),
                                   ([9], [-1.0], "length", 0, 7)]


def test_bad_url_fails_fast_with_clear_error():
    url = f"http://127.0.0.1:{_free_port()}"
    client = EngineClient([url], policy=RetryPolicy(request_timeout_s=2, max_retries=2,
                                                    backoff_s=0.05))
    start = time.monotonic()
    with pytest.raises(EngineUnavailable) as info:
        client.generate([[2, 3]], max_new_tokens=2)
    assert time.monotonic() - start < 5
    message = str(info.value)
    assert url in message and "3 attempt" in message and "POST /generate" in message


def test_server_command_has_cpu_flags_and_config_values():
    model = ModelConfig(path="/models/qwen3-8b")
    role = EngineRoleConfig(tp=2, dtype="bfloat16", max_total_tokens=4096, extra_args=["--x"])
    cpu = build_server_command(model, role, host="127.0.0.1", port=31000, device="cpu", seed=3)
    text = " ".join(cpu)
    for piece in ("--model-path /models/qwen3-8b", "--tp-size 2", "--dtype bfloat16",
                  "--max-total-tokens 4096", "--device cpu", "--sleep-on-idle",
                  "--host 127.0.0.1", "--port 31000", "--random-seed 3"):
        assert piece in text
    assert cpu[-1] == "--x"
    gpu = build_server_command(model, role, host="0.0.0.0", port=1, device="cuda", seed=0)
    assert "--device" not in gpu and "--mem-fraction-static" in gpu


def test_the_api_key_travels_in_the_environment_never_the_command_line(tmp_path, monkeypatch):
    from opd_megatron.config.schema import EnginesConfig
    from opd_megatron.engines import apikey

    env: dict = {}
    cmd = apikey.keyed_command(["python", "-m", "sglang.launch_server", "--port", "1"], env, "s3cret")
    assert cmd == ["python", "-m", "opd_megatron.engines.apikey", "sglang.launch_server", "--port", "1"]
    assert env == {apikey.SERVER_KEY_ENV: "s3cret"} and "s3cret" not in " ".join(cmd)
    assert apikey.keyed_command(["python", "-m", "x"], env, None) == ["python", "-m", "x"]
    # where the key comes from: api_key_env, else the job's owner-only file, else (beyond loopback) made here
    monkeypatch.delenv(apikey.KEY_FILE_ENV, raising=False)
    assert apikey.run_key(EnginesConfig(host="127.0.0.1")) is None
    own = apikey.run_key(EnginesConfig(host="10.0.0.7"))
    assert own and len(own) >= 32 and apikey.run_key(EnginesConfig(host="10.0.0.7")) == own
    monkeypatch.setenv("MY_KEY", "mine")
    assert apikey.run_key(EnginesConfig(host="10.0.0.7", api_key_env="MY_KEY")) == "mine"
    with pytest.raises(ConfigError, match=r"^engines\.api_key_env: \$UNSET_KEY is unset"):
        apikey.run_key(EnginesConfig(api_key_env="UNSET_KEY"))
    key_file = tmp_path / "api-key"
    key_file.write_text("from-file\n")
    key_file.chmod(0o644)
    monkeypatch.setenv(apikey.KEY_FILE_ENV, str(key_file))
    with pytest.raises(ConfigError, match="readable by other users"):
        apikey.run_key(EnginesConfig())
    key_file.chmod(0o600)
    assert apikey.run_key(EnginesConfig(host="10.0.0.7")) == "from-file"


def test_missing_model_is_config_error_before_any_process(tmp_path):
    with pytest.raises(ConfigError, match="student.path"):
        validate_role("student", ModelConfig(path=str(tmp_path / "nope")), EngineRoleConfig())
    (tmp_path / "student").mkdir()
    (tmp_path / "student" / "config.json").write_text("{}")
    engines = EnginesConfig(device="cpu", base_port=_free_port())
    with pytest.raises(ConfigError, match="teacher.path"):
        launch_engines(ModelConfig(path=str(tmp_path / "student")), ModelConfig(path=""),
                       engines, tmp_path)


def test_urls_set_launches_nothing(tmp_path):
    engines = EnginesConfig(device="cpu")
    engines.student.urls = ["http://10.0.0.5:30000/"]
    groups = launch_engines(ModelConfig(path=""), None, engines, tmp_path)
    assert groups["student"].request_urls == ["http://10.0.0.5:30000"]
    assert groups["student"].processes == []


def test_tokenizer_mismatch_names_both_paths(tmp_path):
    from opd_megatron.engines.compat import check_tokenizers_compatible
    from opd_megatron.models.tiny import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path / "student")
    build_tokenizer().save_pretrained(tmp_path / "teacher")
    other = build_tokenizer()
    other.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    other.save_pretrained(tmp_path / "other")
    student = ModelConfig(path=str(tmp_path / "student"))
    check_tokenizers_compatible(student, ModelConfig(path=str(tmp_path / "teacher")),
                                use_chat_template=True)
    other_cfg = ModelConfig(path=str(tmp_path / "other"))
    check_tokenizers_compatible(student, other_cfg, use_chat_template=False)
    with pytest.raises(ConfigError) as info:
        check_tokenizers_compatible(student, other_cfg, use_chat_template=True)
    assert str(tmp_path / "student") in str(info.value)
    assert str(tmp_path / "other") in str(info.value) and "chat template" in str(info.value)


def test_sgl_kernel_shim_assigns_token_slots_and_refuses_missing_ops():
    sgl_kernel = pytest.importorskip("sgl_kernel")
    if not getattr(sgl_kernel, "IS_OPD_CPU_SHIM", False):
        pytest.skip("the real sgl_kernel is installed")
    table = torch.zeros(3, 6, dtype=torch.int32)
    sgl_kernel.assign_req_to_token_pool_cpu(
        torch.tensor([2, 0]), table, torch.tensor([1, 0]), torch.tensor([4, 2]),
        torch.tensor([10, 11, 12, 20, 21]), 6)
    assert table[2].tolist() == [0, 10, 11, 12, 0, 0]
    assert table[0].tolist() == [20, 21, 0, 0, 0, 0]
    with pytest.raises(NotImplementedError, match="sgl_kernel.fused_add_rmsnorm"):
        sgl_kernel.fused_add_rmsnorm(torch.zeros(1))


def test_torchvision_imports_next_to_transformers_qwen3():
    import subprocess
    import sys

    code = ("import torchvision, transformers; from transformers import Qwen3ForCausalLM; "
            "import sglang.srt.configs; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_cpu_shims_refused_on_gpu_config():
    import importlib.metadata

    from opd_megatron.engines.launcher import check_gpu_stack

    try:
        importlib.metadata.distribution("sgl-kernel-cpu-shim")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the CPU shim is not installed here")
    with pytest.raises(ConfigError, match="pip uninstall sgl-kernel-cpu-shim"):
        check_gpu_stack()


def test_scoring_waves_put_one_leader_per_long_prompt_group_first():
    long_prompt, short_prompt = list(range(40)), [2, 5]
    rollouts = [Rollout(p, [3], [0.0]) for p in (long_prompt, long_prompt, short_prompt,
                                                  long_prompt, short_prompt)]
    first, second = EngineClient(["http://x"], min_shared_prompt_tokens=32)._scoring_waves(rollouts)
    assert first == [0, 2, 4] and second == [1, 3]
