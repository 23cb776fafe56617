"""Tasks, prompt sources and the generated tasks.

``tasks`` (the Task protocol and ``make_task``: prompts, reward, held-out evaluation, by
data.source), ``prompts`` (the resumable prompt stream, the generated held-out prompts, the
chat template), ``dataset`` (rows of jsonl, parquet, save_to_disk and hub datasets; the
held-out split), ``arithmetic`` (the multi-step reasoning task), ``knowledge`` (instruct and
new-fact documents), ``grading`` (the math and choice graders, shared by rewards and
benchmarks), ``mathgen`` (a generated math task stored in DeepMath's schema).
"""

from opd_megatron.data import arithmetic, grading, knowledge
from opd_megatron.data.prompts import Prompt, PromptSource, encode_prompt, heldout_prompts
from opd_megatron.data.tasks import Task, make_task, task_of

__all__ = ["Prompt", "PromptSource", "Task", "encode_prompt", "heldout_prompts", "make_task", "task_of",
           "arithmetic", "grading", "knowledge"]
