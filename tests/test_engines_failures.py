"""Servers that stall, die mid-request or never start: a retry or a clear error, never a hang.

Uses a throwaway "victim" server (the teacher model, so the teacher server can take over its
requests) plus the session teacher server; the victim is stopped and killed here.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.engines_helpers import free_port, start_server
from opd_megatron.engines.client import EngineClient
from opd_megatron.engines.http import EngineUnavailable, RetryPolicy
from opd_megatron.engines.launcher import (build_router_command, start_process,
                                           wait_healthy)

# Registered as a plugin so the session-scoped servers are shared by all engine test modules.
pytestmark = pytest.mark.timeout(600)
PROMPTS = [[2, 11, 14, 4, 15], [2, 6, 13, 4, 15, 8, 15], [2, 9, 12, 3, 15]]


@pytest.fixture(scope="module")
def victim(engine_models, tmp_path_factory):
    group = start_server("victim", engine_models["teacher"], tmp_path_factory.mktemp("logs"))
    yield group
    group.stop()


def test_router_passes_generate_to_servers(victim, teacher_server, tmp_path):
    port = free_port()
    cmd = build_router_command([victim.url, teacher_server.url], host="127.0.0.1", port=port)
    router = start_process("router", cmd, f"http://127.0.0.1:{port}", tmp_path, dict(os.environ))
    try:
        wait_healthy(router, timeout_s=60)
        rollouts = EngineClient([router.url]).generate(PROMPTS, samples_per_prompt=2,
                                                        max_new_tokens=4, ignore_eos=True)
        assert [len(r.response_ids) for r in rollouts] == [4] * 6
    finally:
        router.stop()
    assert not router.alive()


def test_stalled_server_times_out_with_clear_error(victim):
    client = EngineClient([victim.url], policy=RetryPolicy(request_timeout_s=2.0, max_retries=1,
                                                           backoff_s=0.1))
    leader = victim.processes[0].pid
    os.kill(leader, signal.SIGSTOP)  # the HTTP front-end stops answering
    try:
        start = time.monotonic()
        with pytest.raises(EngineUnavailable, match="timed out") as info:
            client.generate(PROMPTS[:1], max_new_tokens=2)
        assert time.monotonic() - start < 15
        assert victim.url in str(info.value)
    finally:
        os.kill(leader, signal.SIGCONT)
    assert len(client.generate(PROMPTS[:1], max_new_tokens=2)) == 1  # it recovers


def test_server_killed_mid_request_retries_or_fails_per_config(victim, teacher_server):
    """One client may retry on another server (it succeeds); one with max_retries=0 fails."""
    retrying = EngineClient([victim.url, teacher_server.url],
                            policy=RetryPolicy(request_timeout_s=60, max_retries=2, backoff_s=0.2))
    strict = EngineClient([victim.url], policy=RetryPolicy(request_timeout_s=60, max_retries=0))
    kwargs = dict(samples_per_prompt=4, max_new_tokens=240, ignore_eos=True)
    log_path = victim.processes[0].log_path
    log_offset = log_path.stat().st_size

    async def victim_started_prefill(timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with open(log_path, "rb") as log:
                log.seek(log_offset)
                if b"Prefill batch" in log.read():
                    return
            await asyncio.sleep(0.02)

    async def scenario():
        # Each prompt is its own request; requests i go first to urls[i % 2], so the victim
        # holds prompts 0 and 2 of the retrying client and all of the strict one's.
        retry_task = asyncio.create_task(retrying.agenerate(PROMPTS, **kwargs))
        strict_task = asyncio.create_task(strict.agenerate(PROMPTS, **kwargs))
        await victim_started_prefill()  # requests are running on the victim: kill it now
        in_flight = not retry_task.done() and not strict_task.done()
        os.killpg(victim.processes[0].pid, signal.SIGKILL)
        start = time.monotonic()
        results = await asyncio.gather(retry_task, strict_task, return_exceptions=True)
        return in_flight, time.monotonic() - start, results

    in_flight, elapsed_s, (rollouts, error) = asyncio.run(scenario())
    assert in_flight, "requests finished before the kill; make them longer"
    assert elapsed_s < 60
    assert [len(r.response_ids) for r in rollouts] == [240] * 12
    assert isinstance(error, EngineUnavailable)
    assert victim.url in str(error) and "1 attempt" in str(error)


def test_bad_server_flag_fails_startup_with_log_tail(engine_models, tmp_path):
    from opd_megatron.config.schema import EngineRoleConfig, ModelConfig
    from opd_megatron.engines.launcher import launch_role

    from tests.engines_helpers import cpu_engines

    engines = cpu_engines()
    role = EngineRoleConfig(extra_args=["--no-such-sglang-flag"])
    start = time.monotonic()
    with pytest.raises(EngineUnavailable, match="exited with code") as info:
        launch_role("broken", ModelConfig(path=str(engine_models["teacher"])), role, engines,
                    tmp_path, first_port=engines.base_port)
    assert time.monotonic() - start < 120
    assert "broken-0.log" in str(info.value) and "no-such-sglang-flag" in str(info.value)
