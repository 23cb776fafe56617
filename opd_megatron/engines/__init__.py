"""SGLang as rollout (student) and scoring (teacher) engine. Never imports the learner.

- ``launcher``: ``launch_engines`` / ``launch_role`` start servers (+ sglang-router), wait for
  health, log into the run directory, stop by PID; ``role.urls`` set -> connect only.
- ``client``: ``EngineClient.generate`` -> ``list[Rollout]``; ``EngineClient.score`` fills
  ``Rollout.teacher_logprobs`` (index t scores response token t) and the optional top-k.
- ``weight_sync``: ``WeightSync.push(hf_state_dict, version)`` by tensor / disk / distributed.
- ``compat``: ``check_tokenizers_compatible(student, teacher, use_chat_template=..., eos_token=...)``
  (one tokenizer for both: vocabulary, special tokens, eos/pad ids, chat template output).

Imports are lazy so that ``import opd_megatron.engines`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "EngineClient": "opd_megatron.engines.client",
    "CacheStats": "opd_megatron.engines.client",
    "EngineGroup": "opd_megatron.engines.launcher",
    "launch_engines": "opd_megatron.engines.launcher",
    "launch_role": "opd_megatron.engines.launcher",
    "build_server_command": "opd_megatron.engines.launcher",
    "RetryPolicy": "opd_megatron.engines.http",
    "EngineUnavailable": "opd_megatron.engines.http",
    "EngineRequestError": "opd_megatron.engines.http",
    "WeightSync": "opd_megatron.engines.weight_sync",
    "TensorSync": "opd_megatron.engines.weight_sync",
    "DiskSync": "opd_megatron.engines.weight_sync",
    "DistributedSync": "opd_megatron.engines.weight_sync",
    "make_weight_sync": "opd_megatron.engines.weight_sync",
    "check_tokenizers_compatible": "opd_megatron.engines.compat",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'opd_megatron.engines' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_EXPORTS[name]), name)
