"""Run inside a network namespace made by tests/test_engines_apikey.py (``unshare -n``, a private
address added to its interface): launch a real SGLang server of the student bound to that
non-loopback address the way ``opd run`` launches one, then try weight updates with and
without its key. Prints one JSON object of facts for the test to assert on.

    python -m tests.apikey_netns_worker ADDRESS STUDENT_DIR OTHER_WEIGHTS_DIR LOG_DIR
"""

from __future__ import annotations

import json
import os
import signal
import sys
import urllib.error
import urllib.request
from pathlib import Path


def _post(url: str, path: str, payload: dict, key: str | None) -> int:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(url + path, data=json.dumps(payload).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def main() -> None:
    address, student, other, log_dir = sys.argv[1:5]
    from opd_megatron.config.schema import EngineRoleConfig, EnginesConfig, ModelConfig
    from opd_megatron.engines import apikey
    from opd_megatron.engines.client import EngineClient
    from opd_megatron.engines.launcher import launch_role

    engines = EnginesConfig(host=address, device="cpu", startup_timeout_s=240)
    group = launch_role("student", ModelConfig(path=student), EngineRoleConfig(max_total_tokens=2048),
                        engines, log_dir, first_port=31000)
    facts: dict = {"url": group.url}
    try:
        key = apikey.run_key(engines)
        keyed, bare = EngineClient.from_config([group.url], engines), EngineClient([group.url])

        def logprobs() -> list:
            out = keyed.generate([[2, 11, 14, 4, 15]], max_new_tokens=6, temperature=1.0, seed=7, ignore_eos=True)
            return [round(x, 6) for x in out[0].sampler_logprobs]

        facts["key_len"] = len(key or "")
        pids = [p.pid for p in group.processes]
        cmdlines = []
        for pid_dir in Path("/proc").iterdir():
            if pid_dir.name.isdigit():
                try:
                    if os.getpgid(int(pid_dir.name)) in pids:
                        cmdlines.append((pid_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode())
                except (OSError, ProcessLookupError):
                    continue
        facts["num_server_processes"] = len(cmdlines)
        facts["key_in_a_command_line"] = any(key in c for c in cmdlines)
        facts["cmdline"] = next((c for c in cmdlines if "launch_server" in c), "")
        facts["generate_without_key"] = _post(group.url, "/generate", {"input_ids": [2, 11], "sampling_params":
                                                                     {"max_new_tokens": 1}}, None)
        before = logprobs()
        payload = {"model_path": other, "flush_cache": True}
        facts["update_without_key"] = _post(group.url, "/update_weights_from_disk", payload, None)
        facts["update_with_wrong_key"] = _post(group.url, "/update_weights_from_disk", payload, "not-the-key")
        facts["unchanged_after_refusals"] = logprobs() == before
        try:
            bare.get("/model_info")
            facts["bare_client"] = "answered"
        except Exception as e:  # noqa: BLE001 - the refusal is what is reported
            facts["bare_client"] = type(e).__name__
        facts["update_with_key"] = _post(group.url, "/update_weights_from_disk", payload, key)
        facts["changed_after_update"] = logprobs() != before
    finally:
        group.stop()
    logs = "".join(p.read_text(errors="replace") for p in Path(log_dir).glob("*.log"))
    facts["key_in_logs"] = bool(key) and key in logs
    facts["redacted_in_logs"] = "***" in logs
    print(json.dumps(facts))


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    main()
