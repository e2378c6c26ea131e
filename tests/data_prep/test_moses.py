"""Moses rules: tokenisation against known tokenizer.perl outputs, lowercasing, clean-corpus-n
thresholds, <seg> extraction."""
import gzip

import pytest

from labo_fairseq.data_prep.common import PrepError, extract_segments
from labo_fairseq.data_prep.moses import MosesPipeline, clean_corpus, lowercase, remove_non_printing
from tests.data_prep.conftest import SHARED_DATA, lines

# (lang, raw, tokenizer.perl -l lang output); derived from tokenizer.perl's rules. The German
# "usw ." / "zwei- , drei-" cases also occur in fairseq's IWSLT'14 data (Perl output).
KNOWN = [
    ("en", "Hello, world!", "Hello , world !"),
    ("en", "This isn't a test.", "This isn &apos;t a test ."),
    ("en", 'He said "hi".', "He said &quot; hi &quot; ."),
    ("en", "It costs $5,300.", "It costs $ 5,300 ."),
    ("en", "Mr. Smith went to Washington.", "Mr. Smith went to Washington ."),
    ("en", "A & B | C [x] <y>", "A &amp; B &#124; C &#91; x &#93; &lt; y &gt;"),
    ("en", "a well-known e-mail", "a well-known e-mail"),
    ("en", "Wait... what?", "Wait ... what ?"),
    ("en", "the 1990's", "the 1990 &apos;s"),
    # tokenizer.perl always splits the final period, even off a known prefix (sacremoses 0.1.1 does not)
    ("en", "I live in the U.S.", "I live in the U.S ."),
    ("de", "Das ist z.B. gut.", "Das ist z.B. gut ."),
    ("de", "Ich hab's gesehen.", "Ich hab &apos; s gesehen ."),
    ("de", "Schulen, Krankenhäuser, Büros, usw.", "Schulen , Krankenhäuser , Büros , usw ."),
    ("de", "Es kostet 1.000,50 Euro.", "Es kostet 1.000,50 Euro ."),
    ("de", "Die Nr. 5 ist da.", "Die Nr. 5 ist da ."),
    ("de", "das zwei-, drei-, bis 400-fache", "das zwei- , drei- , bis 400-fache"),
    ("de", "„Hallo“, sagte er.", "„ Hallo “ , sagte er ."),
    # A period stays before a word starting with a lowercase letter (all of it in lowercased text);
    # only the last word's period is always split.
    ("en", "three years, and we can't do that now. crazy.", "three years , and we can &apos;t do that now. crazy ."),
    ("en", "audience: six. six.", "audience : six. six ."),
    ("en", "a man in front of a prince st. cafe.", "a man in front of a prince st. cafe ."),
    ("en", "with dr. batiuk. ok.", "with dr. batiuk. ok ."),
    ("en", "foo. (bar) baz.", "foo . ( bar ) baz ."),
    ("en", 'He said "ok." then left.', "He said &quot; ok . &quot; then left ."),
    # numeric-only prefixes keep their period only before a number
    ("en", "It is No. 5, not No. Six.", "It is No. 5 , not No . Six ."),
    ("en", "The U.S. and the U.K.", "The U.S. and the U.K ."),
    ("de", "nicht akzeptabel. nepriemliv.", "nicht akzeptabel. nepriemliv ."),
    ("de", "ein mann vor einem prince st. cafe.", "ein mann vor einem prince st. cafe ."),
    ("de", "Seite 5. Absatz.", "Seite 5. Absatz ."),
]


@pytest.mark.parametrize("lang,raw,expected", KNOWN)
def test_tokenizer_matches_tokenizer_perl(lang, raw, expected):
    assert MosesPipeline(lang, ["tokenize"])([raw]) == [expected]


def test_aggressive_dash_splitting_and_whitespace_only_lines():
    assert MosesPipeline("en", ["tokenize-aggressive"])(["a well-known e-mail", "  \t "]) == \
        ["a well @-@ known e @-@ mail", ""]


def test_normalize_punctuation_and_non_printing():
    normalise = MosesPipeline("en", ["normalize", "remove-non-printing"])
    assert normalise(["He said «hello» – twice…", "a\u200bb"]) == ['He said "hello" - twice...', "a b"]
    assert remove_non_printing("x\x07y") == "x y"


# input, then normalize-punctuation.perl -l de / -l en / -l cs output (from running Perl)
NORMALIZE_KNOWN = [
    # Perl sees each line with its newline, so its "don't fix period at end of sentence" exception
    # never applies: in German a final period always leaves the closing quotes.
    ("Ein Schild: „Wir sind alle Arbeitnehmer.“", 'Ein Schild: "Wir sind alle Arbeitnehmer".',
     'Ein Schild: "Wir sind alle Arbeitnehmer."', 'Ein Schild: "Wir sind alle Arbeitnehmer."'),
    ('"Zwei Personen spielen."', '"Zwei Personen spielen".', '"Zwei Personen spielen."', '"Zwei Personen spielen."'),
    ('Er sagte "ja." und ging.', 'Er sagte "ja". und ging.', 'Er sagte "ja." und ging.', 'Er sagte "ja." und ging.'),
    ('Text "a." <b>', 'Text "a". <b>', 'Text "a." <b>', 'Text "a." <b>'),
    ('Er sagte "Hallo", dann "Tschüss"...', 'Er sagte "Hallo", dann "Tschüss"...',
     'Er sagte "Hallo," dann "Tschüss..."', 'Er sagte "Hallo", dann "Tschüss"...'),
    ("1\u00a0000 Euro", "1,000 Euro", "1.000 Euro", "1,000 Euro"),
    ("\u0663\u00a0\u0663", "\u0663\u00a0\u0663", "\u0663\u00a0\u0663", "\u0663\u00a0\u0663"),  # ASCII digits only
    ("Levi‘s und x ’ y", "Levi's und x \" y", "Levi's und x \" y", "Levi's und x \" y"),  # sic: ’ -> "
    ("«\u00a0bonjour\u00a0»", '"bonjour"', '"bonjour"', '"bonjour"'),
    (" a ( b ) , c ", " a (b), c ", " a (b), c ", " a (b), c "),  # outer spaces are kept
    ("a ``b'' c", 'a " b " c', 'a " b " c', 'a " b " c'),
]


@pytest.mark.parametrize("raw,de,en,cs", NORMALIZE_KNOWN)
def test_normalize_matches_normalize_punctuation_perl(raw, de, en, cs):
    for lang, expected in (("de", de), ("en", en), ("cs", cs)):
        assert MosesPipeline(lang, ["normalize"])([raw]) == [expected], lang


def test_multi30k_pipeline_on_quotes_and_lowercased_prefixes():
    """lowercase -> normalize -> tokenize, as prepare-multi30k runs it (outputs from the Perl scripts)."""
    pipeline = MosesPipeline("de", ["lowercase", "normalize", "tokenize"])
    assert pipeline(['"Zwei Männer spielen in einer Wasserfontäne."', "Ein Mann vor einem Prince St. Cafe."]) == [
        "&quot; zwei männer spielen in einer wasserfontäne &quot; .", "ein mann vor einem prince st. cafe ."]


def test_lowercase_like_perl_lc():
    assert lowercase("ÄRGER Über ΟΔΟΣ") == "ärger über οδοσ"  # Perl's lc has no final-sigma rule


def write_pair(tmp_path, src, tgt):
    (tmp_path / "c.de").write_text("".join(s + "\n" for s in src), encoding="utf-8")
    (tmp_path / "c.en").write_text("".join(t + "\n" for t in tgt), encoding="utf-8")
    return tmp_path / "c.de", tmp_path / "c.en"


def test_clean_corpus_thresholds(tmp_path):
    pairs = [
        (" ".join(["a"] * 176), " ".join(["b"] * 170)),  # 176 tokens: dropped
        (" ".join(["a"] * 175), " ".join(["b"] * 175)),  # 175: kept
        (" ".join(["a"] * 16), " ".join(["b"] * 10)),    # ratio 1.6: dropped
        (" ".join(["a"] * 10), " ".join(["b"] * 15)),    # ratio 1.5: kept
        ("", "b"),                                        # empty: dropped
        ("   ", "b"),                                     # empty after whitespace normalisation
        ("a  \t b ", " c d"),                             # kept, whitespace normalised
        ("x|y z", "w"),                                   # '|' deleted -> 2 tokens vs 1: dropped (ratio 2)
        ("a" * 1001, "b"),                                # word over 1000 characters: dropped
    ]
    src, tgt = write_pair(tmp_path, [p[0] for p in pairs], [p[1] for p in pairs])
    n_in, n_out, dropped = clean_corpus(src, tgt, tmp_path / "o.de", tmp_path / "o.en", 1, 175, 1.5)
    assert (n_in, n_out) == (9, 3)
    assert dropped == {"over 175 tokens": 1, "length ratio over 1.5": 2, "empty": 2,
                       "word over 1000 characters": 1}
    assert lines(tmp_path / "o.de") == [pairs[1][0], pairs[3][0], "a b"]
    assert lines(tmp_path / "o.en") == [pairs[1][1], pairs[3][1], "c d"]


def test_clean_corpus_line_count_mismatch(tmp_path):
    src, tgt = write_pair(tmp_path, ["a", "b", "c"], ["a", "b"])
    with pytest.raises(PrepError, match=r"c\.en is shorter than .*c\.de"):
        clean_corpus(src, tgt, tmp_path / "o.de", tmp_path / "o.en")


def test_extract_segments(tmp_path):
    good = tmp_path / "good.xml"
    good.write_text('<doc docid="1">\n<seg id="1"> Hello ’ there </seg>\n<seg id="12">x</seg>  \n</doc>\n')
    assert extract_segments(good) == ["Hello ’ there", "x"]
    for bad_line in ['<seg id="1">unterminated', '<seg id=2>no quotes</seg>',
                     '<seg id="1">a</seg><seg id="2">b</seg>']:
        bad = tmp_path / "bad.xml"
        bad.write_text(f"<doc>\n{bad_line}\n</doc>\n")
        with pytest.raises(PrepError, match=r"bad\.xml: line 2: malformed segment"):
            extract_segments(bad)
    empty = tmp_path / "empty.xml"
    empty.write_text("<doc>\n</doc>\n")
    with pytest.raises(PrepError, match="no <seg"):
        extract_segments(empty)


IWSLT_TOK = SHARED_DATA / "iwslt14-tok"
ESCAPES = [("&#124;", "|"), ("&lt;", "<"), ("&gt;", ">"), ("&apos;", "'"), ("&quot;", '"'),
           ("&#91;", "["), ("&#93;", "]"), ("&amp;", "&")]


def unescape(line):
    for escaped, char in ESCAPES:
        line = line.replace(escaped, char)
    return line


@pytest.mark.skipif(not IWSLT_TOK.is_dir(), reason=f"shared IWSLT'14 tokenised data not present at {IWSLT_TOK}")
@pytest.mark.parametrize("lang", ["de", "en"])
def test_fixed_point_on_perl_tokenised_iwslt(lang):
    """Tokenising + lowercasing Perl's (unescaped) output should change nothing.

    This shows our rules do not split what tokenizer.perl left joined; it cannot show agreement on
    raw text. English lines with an apostrophe are left out: Moses turns "it 's" into "it ' s"
    (tokenizer.perl is not a fixed point there either). The few German misses come from lowercased
    abbreviations ("nr.", "dr.", "art.") that are no longer in the case-sensitive prefix list.
    """
    with gzip.open(IWSLT_TOK / f"valid.{lang}.gz", "rt", encoding="utf-8") as f:
        sample = [line.rstrip("\n") for line in f][:3000]
    if lang == "en":
        sample = [line for line in sample if "&apos;" not in line]
    retokenised = MosesPipeline(lang, ["tokenize", "lowercase"])([unescape(line) for line in sample])
    agree = sum(a == b for a, b in zip(sample, retokenised)) / len(sample)
    print(f"{lang}: {agree:.4%} of {len(sample)} Perl-tokenised lines unchanged")
    assert agree >= 0.999
