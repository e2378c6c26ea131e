"""labo_fairseq.evaluation.tokenized_bleu equals fairseq's own scorer, quirks included."""
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.tokenized_bleu import tokenized_bleu


def fairseq_bleu(hypotheses, references):
    """What labo-score computed before, with fairseq's Dictionary and C scorer."""
    from fairseq.data import Dictionary
    from fairseq.scoring import bleu

    dictionary = Dictionary()
    scorer = bleu.Scorer(bleu.BleuConfig(pad=dictionary.pad(), eos=dictionary.eos(), unk=dictionary.unk()))
    for hyp, ref in zip(hypotheses, references):
        scorer.add(dictionary.encode_line(ref, add_if_not_exist=True),
                   dictionary.encode_line(hyp, add_if_not_exist=True))
    return {"score": scorer.score(), "precisions": [p * 100 for p in scorer.precision()], "bp": scorer.brevity(),
            "sys_len": int(scorer.stat.predlen), "ref_len": int(scorer.stat.reflen), "string": scorer.result_string()}


# few word types, fairseq's special symbols among them, and whitespace of several kinds, so that
# n-grams repeat and the trimming and <unk> rules are exercised
WORDS = st.sampled_from(["a", "b", "c", "d", "<unk>", "<pad>", "</s>", "<s>"])
SPACES = st.sampled_from([" ", "  ", "\t", " \u00a0"])
LINES = st.builds(lambda words, space, edge: edge + space.join(words) + edge,
                  st.lists(WORDS, max_size=9), SPACES, st.sampled_from(["", " ", "\t"]))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(LINES, LINES), min_size=1, max_size=6))
def test_equals_fairseqs_scorer_number_for_number(pairs):
    hypotheses, references = [h for h, _ in pairs], [r for _, r in pairs]
    ours, theirs = tokenized_bleu(hypotheses, references), fairseq_bleu(hypotheses, references)
    assert ours == theirs


@pytest.mark.parametrize("hypotheses,references", [
    (["<pad> <pad> a b"], ["a b </s> <pad>"]),      # leading pads and trailing specials trimmed
    (["</s>"], ["<pad>"]),                          # never below one token
    (["<unk> a"], ["<unk> a"]),                     # a reference <unk> matches nothing
    (["a </s> b c d e"], ["a </s> b c d e"]),       # an inner </s> is a word
])
def test_special_symbols_as_fairseq_treats_them(hypotheses, references):
    assert tokenized_bleu(hypotheses, references) == fairseq_bleu(hypotheses, references)


def test_scoring_imports_neither_torch_nor_fairseq():
    code = ("import sys; from labo_fairseq.evaluation.score import score_texts; "
            "score_texts(['a b c d'], ['a b c d'], 'en'); "
            "print(sorted(m for m in ('torch', 'fairseq') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unequal_or_empty_inputs_are_refused():
    with pytest.raises(EvaluationError, match="got 2 and 1"):
        tokenized_bleu(["a", "b"], ["a"])
    with pytest.raises(EvaluationError, match="got 0 and 0"):
        tokenized_bleu([], [])
