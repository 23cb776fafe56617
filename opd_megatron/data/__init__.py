"""Prompt sources and the generated tasks.

``prompts`` (the resumable prompt stream, the held-out prompts, the chat template),
``arithmetic`` (the multi-step reasoning task), ``knowledge`` (instruct and new-fact documents),
``grading`` (the math and choice graders, shared by rewards and benchmarks).
"""

from opd_megatron.data import arithmetic, grading, knowledge
from opd_megatron.data.prompts import Prompt, PromptSource, encode_prompt, heldout_prompts

__all__ = ["Prompt", "PromptSource", "encode_prompt", "heldout_prompts", "arithmetic", "grading", "knowledge"]
