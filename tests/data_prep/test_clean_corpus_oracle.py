"""clean_corpus against the real clean-corpus-n.perl (../shared/moses), and its rules as small cases.

The oracle tests are skipped when perl or the Moses scripts are absent; the rule tests below them
hold Perl's answers written in and run everywhere. Each oracle test prints "lines differing / total".
"""
import difflib
import gzip
import random
import shutil
import subprocess

import pytest

from labo_fairseq.data_prep.common import PrepError
from labo_fairseq.data_prep.moses import clean_corpus
from tests.data_prep.conftest import SHARED_DATA
from tests.toy import REPO_ROOT

CLEAN_CORPUS = REPO_ROOT.parent / "shared" / "moses" / "scripts" / "training" / "clean-corpus-n.perl"
IWSLT_TOK = SHARED_DATA / "iwslt14-tok"



def needs_perl(test):
    test = pytest.mark.skipif(shutil.which("perl") is None,
                              reason="perl is not installed (needed to run clean-corpus-n.perl)")(test)
    return pytest.mark.skipif(not CLEAN_CORPUS.is_file(),
                              reason=f"clean-corpus-n.perl is not present at {CLEAN_CORPUS}")(test)


def write_corpus(directory, pairs, final_newline=True):
    """corpus.de / corpus.en in directory, as bytes (so '\\r' and any code point pass unchanged)."""
    for index, lang in enumerate(("de", "en")):
        text = "\n".join(pair[index] for pair in pairs) + ("\n" if final_newline else "")
        (directory / f"corpus.{lang}").write_bytes(text.encode("utf-8"))
    return directory / "corpus"


def read_raw(path):
    text = path.read_bytes().decode("utf-8")
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def run_perl(corpus, min_len, max_len, ratio):
    out = corpus.parent / "perl"
    proc = subprocess.run(["perl", str(CLEAN_CORPUS), "-ratio", str(ratio), str(corpus), "de", "en", str(out),
                           str(min_len), str(max_len)], capture_output=True, timeout=300)
    return proc, out


def run_ours(corpus, min_len, max_len, ratio):
    out = corpus.parent / "ours"
    clean_corpus(f"{corpus}.de", f"{corpus}.en", f"{out}.de", f"{out}.en", min_len, max_len, ratio)
    return out


def compare(label, corpus, n_pairs, min_len=1, max_len=175, ratio=1.5):
    """Asserts that clean_corpus keeps and writes exactly the pairs clean-corpus-n.perl does."""
    proc, perl_out = run_perl(corpus, min_len, max_len, ratio)
    assert proc.returncode == 0, proc.stderr.decode()
    ours_out = run_ours(corpus, min_len, max_len, ratio)
    theirs = list(zip(read_raw(perl_out.with_suffix(".de")), read_raw(perl_out.with_suffix(".en"))))
    ours = list(zip(read_raw(ours_out.with_suffix(".de")), read_raw(ours_out.with_suffix(".en"))))
    matcher = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
    differing = sum(max(i2 - i1, j2 - j1) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal")
    print(f"clean-corpus-n {label} ({min_len}..{max_len}, ratio {ratio}): {differing} / {n_pairs} lines differ "
          f"(perl kept {len(theirs)}, ours {len(ours)})")
    shown = [(tag, ours[i1:i2][:2], theirs[j1:j2][:2]) for tag, i1, i2, j1, j2 in matcher.get_opcodes() if tag != "equal"]
    assert not differing, f"{differing} of {n_pairs} lines differ from Perl, e.g. {shown[:3]!r}"


def words(n, word="w"):
    return " ".join(f"{word}{i}" for i in range(n))


# Every white-space character Perl's \s knows on UTF-8 text, and some it does not.
PERL_SPACES = ["\t", "\x0b", "\x0c", "\r", " ", "\x85", "\xa0", "\u1680", "\u2000", "\u2005", "\u200a", "\u2028",
               "\u2029", "\u202f", "\u205f", "\u3000"]
NOT_SPACES = ["\x1c", "\x1d", "\x1e", "\x1f", "\u180e", "\u200b", "\ufeff", "\x07", "\x00"]


def edge_pairs():
    pairs = [
        ("a b c", "x y z"),
        ("", "x"), ("a", ""), ("", ""), ("   ", "x"), ("\t\r", "y"),
        (words(175), words(175)), (words(176), words(175)), (words(175), words(176)), (words(250), words(250)),
        (words(15), words(10)), (words(10), words(15)), (words(16), words(10)), (words(10), words(16)),
        (words(3), words(2)), (words(2), words(3)), (words(4), words(2)), (words(7), words(5)), (words(1), words(2)),
        (words(150), words(100)), (words(151), words(100)), (words(100), words(150)),
        ("  a   b  ", "x y"), ("\ta\tb\t", " x  y "), ("a b\r", "x y\r"), ("a\r\rb", "x\ry"),
        ("a | b", "x y"), ("a|b c", "x"), ("|", "x"), ("a ||| b", "x y z"),
        ("a" * 1000, "x"), ("a" * 1001, "x"), ("b " + "a" * 1001, "x y"), ("a" * 1001 + "|", "x"),
        ("ä" * 1001, "x"), ("ü" * 1000, "x"),
    ]
    for char in PERL_SPACES + NOT_SPACES:
        pairs += [(f"a{char}b", "x y"), (f"a{char}b", "x"), (f"{char}a b{char}", f"x{char}{char}y"),
                  (f"a {char} b", "x y z"), (char, "x"), ("a" * 600 + char + "a" * 600, "x")]
    rng = random.Random(5)
    pieces = ["a", "bb", "ccc", " ", "  ", "|", *PERL_SPACES, *NOT_SPACES]
    for _ in range(400):
        pairs.append(tuple("".join(rng.choice(pieces) for _ in range(rng.randint(0, 12))) for _ in range(2)))
    return pairs


@needs_perl
@pytest.mark.parametrize("min_len,max_len,ratio", [(1, 175, 1.5), (2, 5, 1.5), (1, 250, 9), (3, 175, 1.0)])
def test_edge_cases_match_perl(tmp_path, min_len, max_len, ratio):
    pairs = edge_pairs()
    compare("edge cases", write_corpus(tmp_path, pairs), len(pairs), min_len, max_len, ratio)


@needs_perl
def test_last_line_without_newline_matches_perl(tmp_path):
    pairs = [("a b", "x y"), ("a  b\t", "x\r")]
    compare("no final newline", write_corpus(tmp_path, pairs, final_newline=False), len(pairs))


@needs_perl
def test_factored_corpus_matches_perl(tmp_path):
    # the first pair has a '|': bars are kept (factors) for the whole corpus
    pairs = [("a|A b|B", "x|X"), ("a|A  b|B", "x|X y|Y"), ("a|A", "x|X y|Y z|Z"), ("a b", "x")]
    compare("factored", write_corpus(tmp_path, pairs), len(pairs), ratio=9)


@needs_perl
@pytest.mark.parametrize("blank", ["a|A b||B", "a|A |b", "a||A"])
def test_blank_factor_fails_like_perl(tmp_path, blank):
    corpus = write_corpus(tmp_path, [("a|A", "x|X"), (blank, "x|X y|Y")])
    proc, _ = run_perl(corpus, 1, 175, 9)
    assert proc.returncode != 0 and b"blank factor" in proc.stderr
    with pytest.raises(PrepError, match=r"corpus\.de: line 2: blank factor"):
        run_ours(corpus, 1, 175, 9)


def read_gz(path):
    with gzip.open(path, "rb") as handle:
        return [line.rstrip(b"\n").decode("utf-8") for line in handle]


@needs_perl
@pytest.mark.skipif(not IWSLT_TOK.is_dir(), reason=f"shared IWSLT'14 tokenised data not present at {IWSLT_TOK}")
@pytest.mark.parametrize("max_len,shift", [(175, 0), (20, 0), (30, 1)])
def test_iwslt_tokenised_matches_perl(tmp_path, max_len, shift):
    """The real tokenised valid + test sets; shifted by a line, the pairs no longer match, so the
    ratio rule decides far more of them."""
    de = read_gz(IWSLT_TOK / "valid.de.gz") + read_gz(IWSLT_TOK / "test.de.gz")
    en = read_gz(IWSLT_TOK / "valid.en.gz") + read_gz(IWSLT_TOK / "test.en.gz")
    pairs = list(zip(de, en[shift:] + en[:shift]))
    compare(f"iwslt14 valid+test shift {shift}", write_corpus(tmp_path, pairs), len(pairs), 1, max_len, 1.5)


# ------------------------------------------------------------------------ rules, with Perl's answers


def clean(tmp_path, pairs, min_len=1, max_len=175, ratio=1.5):
    corpus = write_corpus(tmp_path, pairs)
    out = run_ours(corpus, min_len, max_len, ratio)
    return list(zip(read_raw(out.with_suffix(".de")), read_raw(out.with_suffix(".en"))))


def test_perl_white_space(tmp_path):
    # Perl's \s covers no-break and ideographic spaces and '\r'; not U+001C..U+001F, U+200B, U+180E
    assert clean(tmp_path, [("a\xa0b", "x y"), ("a\u3000b\r", "x\ty"), ("a\x1cb", "x"), ("a\u200bb", "x"),
                            ("a\u180eb", "x")]) == [
        ("a b", "x y"), ("a b", "x y"), ("a\x1cb", "x"), ("a\u200bb", "x"), ("a\u180eb", "x")]


def test_ratio_at_the_limit_is_kept(tmp_path):
    assert clean(tmp_path, [(words(3), words(2)), (words(2), words(3)), (words(7), words(5)), (words(8), words(5))]) \
        == [(words(3), words(2)), (words(2), words(3)), (words(7), words(5))]


def test_bars_and_long_words(tmp_path):
    # not factored (no '|' in the first pair): bars are deleted before counting and before the
    # word-length check, which does not count bars either
    assert clean(tmp_path, [("a b", "x y"), ("a | b", "x y"), ("|" + "a" * 1000, "x"), ("a" * 1001, "x")],
                 ratio=9) == [("a b", "x y"), ("a b", "x y"), ("a" * 1000, "x")]


def test_blank_factor_is_an_error(tmp_path):
    with pytest.raises(PrepError, match=r"corpus\.en: line 2: blank factor in a factored corpus"):
        clean(tmp_path, [("a|A", "x|X"), ("a|A", "x||X")])
