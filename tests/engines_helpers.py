"""Helpers of the engine tests: tiny peaked models, server start, HF (direct forward) references."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Dict, List

import torch

from opd_megatron.config.schema import EngineRoleConfig, EnginesConfig, ModelConfig
from opd_megatron.models.tiny import save_random_model

LOGIT_SCALE = 2.5
"""Random init gives near-uniform next-token distributions (all logprobs ~ -3.04); scaling the
tied embedding makes them peaked like a trained model's, so alignment errors show."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_model(out_dir: Path, shape, seed: int) -> Path:
    from safetensors.torch import load_file, save_file

    save_random_model(out_dir, shape, seed=seed)
    weights_path = out_dir / "model.safetensors"
    state = load_file(str(weights_path))
    state["model.embed_tokens.weight"] = state["model.embed_tokens.weight"] * LOGIT_SCALE
    save_file(state, str(weights_path), metadata={"format": "pt"})
    return out_dir


def cpu_engines(**overrides) -> EnginesConfig:
    cfg = EnginesConfig(device="cpu", base_port=free_port(), startup_timeout_s=240.0,
                        request_timeout_s=60.0, max_retries=2)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def start_server(role: str, model_dir: Path, log_dir: Path, **engine_overrides):
    from opd_megatron.engines.launcher import launch_role

    engines = cpu_engines(**engine_overrides)
    role_cfg = EngineRoleConfig(max_total_tokens=16384, dtype="float32")
    return launch_role(role, ModelConfig(path=str(model_dir)), role_cfg, engines, log_dir,
                       first_port=engines.base_port)


_HF_CACHE: Dict[str, torch.nn.Module] = {}


def hf_model(model_dir: Path):
    """HF transformers Qwen3, eager attention, fp32: the direct-forward reference."""
    from transformers import Qwen3ForCausalLM

    key = str(model_dir)
    if key not in _HF_CACHE:
        _HF_CACHE[key] = Qwen3ForCausalLM.from_pretrained(
            key, attn_implementation="eager", dtype=torch.float32).eval()
    return _HF_CACHE[key]


def hf_response_logprobs(model_dir: Path, prompt: List[int], response: List[int],
                         temperature: float = 1.0) -> torch.Tensor:
    """[T, V] log softmax(logits / T) at the positions predicting response tokens 0..T-1."""
    ids = torch.tensor([list(prompt) + list(response)])
    with torch.no_grad():
        logits = hf_model(model_dir)(ids).logits[0].double()
    num_prompt = len(prompt)
    rows = logits[num_prompt - 1: num_prompt - 1 + len(response)]
    return torch.log_softmax(rows / temperature, dim=-1)


def token_logprobs(full: torch.Tensor, response: List[int]) -> torch.Tensor:
    return full.gather(1, torch.tensor(response).view(-1, 1)).squeeze(1)
