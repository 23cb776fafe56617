"""A server that listens beyond loopback has an API key, and the key is nowhere to be read
(opd_megatron/engines/apikey.py): a real SGLang server of the tiny student, launched as `opd run`
launches one, bound to a non-loopback address of a network namespace this test makes (a private
address on its loopback interface, `unshare -n`: nothing outside can reach it). Without the key a weight update is
refused and the weights are unchanged; with it the update is accepted and they change; the key
is on no process's command line and in no log (SGLang logs its resolved arguments: redacted)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.conftest import PYTHON, REPO, cannot_run

pytestmark = pytest.mark.slow
ADDRESS = "10.211.0.1"


def _netns_or_fail() -> None:
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        cannot_run(f"this test needs network namespaces (root): {probe.stderr.strip()}")


def test_a_server_beyond_loopback_refuses_weight_updates_without_its_key(engine_models, tmp_path):
    _netns_or_fail()
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-weights"
    shutil.copytree(engine_models["student"], other)
    weights = load_file(str(other / "model.safetensors"))
    save_file({k: (v * 1.5 if "embed" in k else v) for k, v in weights.items()}, str(other / "model.safetensors"))
    # a private address on the namespace's own interface (no kernel module needed, unlike a dummy)
    setup = f'ip link set lo up && ip addr add {ADDRESS}/32 dev lo && exec "$@"'
    proc = subprocess.run(["unshare", "-n", "sh", "-c", setup, "sh", PYTHON, "-m", "tests.apikey_netns_worker",
                           ADDRESS, str(engine_models["student"]), str(other), str(tmp_path / "logs")],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["url"] == f"http://{ADDRESS}:31000"
    assert facts["key_len"] >= 32  # made for this run: no key was configured
    assert facts["generate_without_key"] == 401
    assert facts["update_without_key"] == 401 and facts["update_with_wrong_key"] == 401
    assert facts["unchanged_after_refusals"], facts
    assert facts["bare_client"] != "answered"
    assert facts["update_with_key"] == 200 and facts["changed_after_update"], facts
    assert facts["num_server_processes"] >= 2 and "opd_megatron.engines.apikey sglang.launch_server" in facts["cmdline"]
    assert not facts["key_in_a_command_line"] and not facts["key_in_logs"] and facts["redacted_in_logs"], facts
