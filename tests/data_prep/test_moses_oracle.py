"""The Moses steps against the real Perl scripts (../shared/moses) on real and random text.

Skipped when the scripts or perl are absent; test_moses.py holds the same rules as small cases with
Perl's output written in, and runs everywhere. Each test prints "lines differing / total".
The default tests use samples (a few thousand lines); the `slow` ones run the whole files.
"""
import gzip
import random
import re
import shutil
import subprocess

import pytest

from labo_fairseq.data_prep.moses import MosesPipeline
from tests.data_prep.conftest import SHARED_DATA
from tests.toy import REPO_ROOT

MOSES = REPO_ROOT.parent / "shared" / "moses" / "scripts"
MULTI30K = SHARED_DATA / "multi30k"
IWSLT_TOK = SHARED_DATA / "iwslt14-tok"

pytestmark = [
    pytest.mark.skipif(shutil.which("perl") is None, reason="perl is not installed (needed to run the Moses scripts)"),
    pytest.mark.skipif(not (MOSES / "tokenizer" / "tokenizer.perl").is_file(),
                       reason=f"the Moses perl scripts are not present at {MOSES}"),
]
needs_multi30k = pytest.mark.skipif(not MULTI30K.is_dir(), reason=f"shared Multi30k data not present at {MULTI30K}")
needs_iwslt = pytest.mark.skipif(not IWSLT_TOK.is_dir(), reason=f"shared IWSLT'14 data not present at {IWSLT_TOK}")


def perl_command(step, lang):
    tokenizer = ["tokenizer/tokenizer.perl", "-l", lang, "-q", "-b"]
    script, *args = {
        "lowercase": ["tokenizer/lowercase.perl"],
        "normalize": ["tokenizer/normalize-punctuation.perl", "-l", lang],
        "remove-non-printing": ["tokenizer/remove-non-printing-char.perl"],
        "tokenize": tokenizer,
        "tokenize-aggressive": tokenizer + ["-a"],
        "detokenize": ["tokenizer/detokenizer.perl", "-l", lang, "-q", "-b"],
    }[step]
    return ["perl", str(MOSES / script), *args]


def run_perl(steps, lang, lines):
    """The Perl scripts for `steps`, piped, on newline-terminated lines."""
    data = "".join(line + "\n" for line in lines).encode("utf-8")
    for step in steps:
        # bytes, not text mode: universal newlines would turn a '\r' in Perl's output into a line break
        data = subprocess.run(perl_command(step, lang), input=data, capture_output=True, check=True,
                              timeout=600).stdout
    out = data.decode("utf-8").split("\n")
    assert out[-1] == "" and len(out) == len(lines) + 1, "Perl output is not one line per input line"
    return out[:-1]


def compare(label, steps, lang, lines):
    """Asserts that our steps give Perl's output on every line."""
    ours, theirs = MosesPipeline(lang, steps)(lines), run_perl(steps, lang, lines)
    differing = [(line, a, b) for line, a, b in zip(lines, ours, theirs) if a != b]
    print(f"{label} {lang} {'+'.join(steps)}: {len(differing)} / {len(lines)} lines differ")
    shown = "\n".join(f"  in:   {line!r}\n  ours: {a!r}\n  perl: {b!r}" for line, a, b in differing[:5])
    assert not differing, f"{len(differing)} of {len(lines)} lines differ from Perl, e.g.:\n{shown}"


def read_gz(path):
    with gzip.open(path, "rt", encoding="utf-8", newline="\n") as handle:
        return [line[:-1] if line.endswith("\n") else line for line in handle]


# Lines where the period and quote rules decide something: a period before a lowercase word or
# next to a quote, numbers with a period, quotes of any kind.
INTERESTING = re.compile(r"""\S\.\s+\S|\.["„“”'’‘]|["„“”«»‘’][.,]|\d\.""")


def sample(lines, size, seed):
    """Every line where the tricky rules apply plus a random rest, up to `size`, in file order."""
    tricky = [i for i, line in enumerate(lines) if INTERESTING.search(line)]
    rest = [i for i in range(len(lines)) if not INTERESTING.search(lines[i])]
    picked = set(tricky[:size]) | set(random.Random(seed).sample(rest, max(0, min(len(rest), size - len(tricky)))))
    return [lines[i] for i in sorted(picked)]


def multi30k_lines(lang):
    return [line for split in ("train", "val", "test_2016_flickr") for line in read_gz(MULTI30K / f"{split}.{lang}.gz")]


def iwslt_lines(lang, size=None, seed=None):
    """IWSLT'14 valid + test (or a sample) as text again: Perl's detokenizer on the tokenised files.

    The detokenised lines are just input here (both sides tokenise the same text); they are
    lowercased, which exercises the lowercase-next-word period rule on real sentences.
    """
    tokenised = read_gz(IWSLT_TOK / f"valid.{lang}.gz") + read_gz(IWSLT_TOK / f"test.{lang}.gz")
    if size:
        tokenised = sample(tokenised, size, seed)
    return run_perl(["detokenize"], lang, tokenised)


MULTI30K_STEPS = ["lowercase", "normalize", "tokenize"]   # prepare-multi30k
IWSLT_STEPS = ["tokenize", "lowercase"]                   # prepare-iwslt14 (after tag stripping)
WMT_STEPS = ["normalize", "remove-non-printing", "tokenize-aggressive"]  # prepare-wmt14en2de


@needs_multi30k
@pytest.mark.parametrize("lang", ["de", "en"])
def test_multi30k_pipeline_sample(lang):
    compare("multi30k sample", MULTI30K_STEPS, lang, sample(multi30k_lines(lang), 3000, seed=13))


@needs_multi30k
@pytest.mark.parametrize("lang", ["de", "en"])
def test_cased_tokenizer_on_multi30k_sample(lang):
    compare("multi30k sample (cased)", ["tokenize"], lang, sample(multi30k_lines(lang), 3000, seed=14))


@needs_iwslt
@pytest.mark.parametrize("lang", ["de", "en"])
def test_iwslt_pipeline_sample(lang):
    lines = iwslt_lines(lang, 3000, seed=15)
    compare("iwslt14 sample", IWSLT_STEPS, lang, lines)
    compare("iwslt14 sample", ["normalize"], lang, lines)


@pytest.mark.slow
@needs_multi30k
@pytest.mark.parametrize("lang", ["de", "en"])
def test_multi30k_whole(lang):
    lines = multi30k_lines(lang)
    compare("multi30k", MULTI30K_STEPS, lang, lines)
    compare("multi30k (cased)", ["tokenize"], lang, lines)
    compare("multi30k", WMT_STEPS, lang, lines)


@pytest.mark.slow
@needs_iwslt
@pytest.mark.parametrize("lang", ["de", "en"])
def test_iwslt_whole(lang):
    lines = iwslt_lines(lang)
    compare("iwslt14", IWSLT_STEPS, lang, lines)
    compare("iwslt14", WMT_STEPS, lang, lines)


# Characters and words the rules look at: quotes of every kind, periods, prefixes, numbers,
# no-break spaces, control and format characters, non-ASCII digits and letters.
PIECES = list("aAbzZ09 .,;:!?\"'`()[]<>&|%-–—„“”‘’‚´…«»\u00a0º\t\r#/@$") + [
    "nº", "cm", "ºC", "St.", "st.", "Nr.", "usw.", "U.S.", "No.", " x", " X", "..", "''", "´´", "σ", "Σ",
    " now.", " ok.", " Dr.", " No. 5", "é", "ß", "\u200b", "\x1c", "\x07", "٣", "Ⅻ"]


def random_lines(n, seed):
    rng = random.Random(seed)
    lines = ["".join(rng.choice(PIECES) for _ in range(rng.randint(1, 25))) for _ in range(n)]
    # whitespace-only lines are a documented difference (MOSES_DIFFERENCES): Perl keeps them
    return [line for line in lines if line.strip()]


@pytest.mark.parametrize("lang,steps", [
    ("de", ["normalize"]), ("en", ["normalize"]), ("fr", ["normalize"]), ("cs", ["normalize"]),
    ("de", ["tokenize"]), ("en", ["tokenize"]), ("de", ["tokenize-aggressive"]), ("en", ["tokenize-aggressive"]),
    ("en", ["lowercase"]), ("en", ["remove-non-printing"]),
])
def test_random_text(lang, steps):
    compare("random", steps, lang, random_lines(2000, seed=f"{lang} {steps}"))
