"""Moses text processing (tokenizer.perl, lowercase.perl, normalize-punctuation.perl,
remove-non-printing-char.perl, clean-corpus-n.perl): tokenisation on top of sacremoses with the Perl
behaviour restored where sacremoses 0.1.1 differs; punctuation normalisation restated from the Perl
script.

Known remaining differences from the Perl scripts are listed in MOSES_DIFFERENCES.
"""
import re
from collections import Counter

import regex
from sacremoses import MosesTokenizer

from labo_fairseq.textfiles import iter_lines

from .common import PrepError

MOSES_DIFFERENCES = """\
- whitespace-only input lines: tokenizer.perl prints them unchanged, we print an empty line
  (clean-corpus-n drops both; in test sets fairseq-preprocess reads both as empty).
- a file's last line without a final newline: normalize-punctuation.perl (languages other than en
  and cs) then leaves a period inside closing quotes at the end of that line; we treat every line
  as newline-terminated and move it ('a "b."' -> 'a "b".'), as Perl does on all other lines.
- Unicode tables: character classes (IsAlpha, IsN, IsLower...) come from sacremoses' perluniprops
  snapshot, Perl uses its own Unicode version; characters added in between can tokenise differently.
"""

# Perl's tokenizer deletes [\000-\037] after turning \s into spaces; Python's \s also covers
# U+001C..U+001F (which Perl's does not), so those would become spaces instead of vanishing.
_PY_ONLY_SPACE_CONTROLS = {c: None for c in range(0x1C, 0x20)}


class PerlTokenizer(MosesTokenizer):
    """sacremoses' MosesTokenizer with tokenizer.perl's non-breaking-prefix (word-final period) rule.

    sacremoses 0.1.1 keeps a known prefix ("usw.", "U.S.") joined when it is the last word, where
    tokenizer.perl always splits the last word's period ("in the U.S." -> "in the U.S ."). Its
    other period rules match Perl's, so the whole rule is restated here as Perl has it.
    """

    def __init__(self, lang="en"):
        super().__init__(lang=lang)
        # Perl's %NONBREAKING_PREFIX: 1 = always non-breaking, 2 = only before a number
        self._prefixes = {p: 1 for p in self.NONBREAKING_PREFIXES if not self.has_numeric_only(p)}
        self._prefixes.update({p: 2 for p in self.NUMERIC_ONLY_PREFIXES})
        self._lower = frozenset(self.IsLower)
        self._alpha = frozenset(self.IsAlpha)

    def handles_nonbreaking_prefixes(self, text):
        # Perl splits on each single space (a double space gives an empty word, which is never
        # lowercase) and drops trailing empty fields, which decides what the last word is.
        words = text.rstrip(" ").split(" ")
        last = len(words) - 1
        for i, word in enumerate(words):
            if len(word) < 2 or not word.endswith("."):
                continue
            prefix = word[:-1]
            if i == last:
                words[i] = prefix + " ."  # "unlikely to be a non-breaking prefix"
                continue
            following = words[i + 1]
            if ("." in prefix and not self._alpha.isdisjoint(prefix)) or self._prefixes.get(prefix) == 1 \
                    or following[:1] in self._lower:
                continue  # "now. crazy" stays: Perl keeps the period before a lowercase word
            if self._prefixes.get(prefix) == 2 and following[:1].isascii() and following[:1].isdigit():
                continue
            words[i] = prefix + " ."
        return " ".join(words)

    def tokenize_line(self, line, aggressive=False, escape=True):
        line = line.translate(_PY_ONLY_SPACE_CONTROLS)
        if not line.strip():
            return ""
        return self.tokenize(line, aggressive_dash_splits=aggressive, return_str=True, escape=escape)


_NBSP = "\u00a0"
# normalize-punctuation.perl reads bytes (no utf8 layer), so \d and \s are ASCII-only there.
_D, _S = "[0-9]", "[ \t\n\x0b\f\r]"


def _compile(rules):
    return [(re.compile(pattern), replacement) for pattern, replacement in rules]


# normalize-punctuation.perl's substitutions in its order (without -penn).
_NORMALIZE_RULES = _compile([
    (r"\r", ""),
    (r"\(", " ("), (r"\)", ") "), (r" +", " "),
    (r"\) ([.!:?;,])", r")\1"), (r"\( ", "("), (r" \)", ")"),
    (f"({_D}) %", r"\1%"), (r" :", ":"), (r" ;", ";"),
    (r"`", "'"), (r"''", ' " '),
    ("„", '"'), ("“", '"'), ("”", '"'), ("–", "-"), ("—", " - "), (r" +", " "),
    ("´", "'"),
    ("([a-zA-Z])‘([a-zA-Z])", r"\1'\2"), ("([a-zA-Z])’([a-zA-Z])", r"\1'\2"),
    ("‘", "'"), ("‚", "'"), ("’", '"'),  # sic: Perl turns a remaining ’ into a double quote
    ("''", '"'), ("´´", '"'), ("…", "..."),
    (f"{_NBSP}«{_NBSP}", ' "'), (f"«{_NBSP}", '"'), ("«", '"'),
    (f"{_NBSP}»{_NBSP}", '" '), (f"{_NBSP}»", '"'), ("»", '"'),
    (f"{_NBSP}%", "%"), (f"nº{_NBSP}", "nº "), (f"{_NBSP}:", ":"), (f"{_NBSP}ºC", " ºC"),
    (f"{_NBSP}cm", " cm"), (f"{_NBSP}\\?", "?"), (f"{_NBSP}!", "!"), (f"{_NBSP};", ";"),
    (f",{_NBSP}", ", "), (r" +", " "),
])
_QUOTE_RULES = {
    "en": _compile([(r'"([,.]+)', r'\1"')]),
    "cs": [], "cz": [],
    # every other language: German/Spanish/French style
    None: _compile([(r',"', '",'), (f'(\\.+)"({_S}*[^<])', r'"\1\2')]),
}
_DECIMAL_COMMA = ("de", "es", "cz", "cs", "fr")
_DIGIT_NBSP_DIGIT = re.compile(f"({_D}){_NBSP}({_D})")


def normalize_punctuation(line, lang):
    """normalize-punctuation.perl -l lang for one line (without its newline).

    Perl applies the rules to the line with its newline, so the "don't fix period at end of
    sentence" rule does not hold there: for German '... Hochzeit."' it gives '... Hochzeit".'.
    The newline is added here to do the same. Perl also keeps leading and trailing spaces.
    """
    text = line + "\n"
    for pattern, replacement in _NORMALIZE_RULES + _QUOTE_RULES.get(lang, _QUOTE_RULES[None]):
        text = pattern.sub(replacement, text)
    text = _DIGIT_NBSP_DIGIT.sub(r"\1,\2" if lang in _DECIMAL_COMMA else r"\1.\2", text)
    return text[:-1] if text.endswith("\n") else text


def lowercase(line):
    """lowercase.perl (Perl's lc): like str.lower() but without Greek final-sigma context rules."""
    return line.replace("Σ", "σ").lower()


_NON_PRINTING = regex.compile(r"\p{C}")


def remove_non_printing(line):
    """remove-non-printing-char.perl: every Unicode 'Other' character (controls, format...) -> space."""
    return _NON_PRINTING.sub(" ", line)


STEPS = ("lowercase", "normalize", "remove-non-printing", "tokenize", "tokenize-aggressive", "apostrophe")


class MosesPipeline:
    """A picklable block transform applying the named Moses steps in order to each line.

    'apostrophe' is the sed "s/’/'/g" that fairseq's recipes apply to test sets before tokenising.
    """

    def __init__(self, lang, steps):
        unknown = [s for s in steps if s not in STEPS]
        if unknown:
            raise ValueError(f"unknown steps {unknown}")
        self.lang = lang
        self.steps = tuple(steps)
        self._tokenizer = None

    def __getstate__(self):
        return {"lang": self.lang, "steps": self.steps}

    def __setstate__(self, state):
        self.__init__(state["lang"], state["steps"])

    def _line(self, line):
        for step in self.steps:
            if step == "lowercase":
                line = lowercase(line)
            elif step == "apostrophe":
                line = line.replace("’", "'")
            elif step == "normalize":
                line = normalize_punctuation(line, self.lang)
            elif step == "remove-non-printing":
                line = remove_non_printing(line)
            else:
                if self._tokenizer is None:
                    self._tokenizer = PerlTokenizer(lang=self.lang)
                line = self._tokenizer.tokenize_line(line, aggressive=step == "tokenize-aggressive")
        return line

    def __call__(self, block):
        return [self._line(line) for line in block]


# ------------------------------------------------------------------------------------ clean-corpus-n

# Perl's \s on character strings: Python's \s without U+001C..U+001F (Perl reads those as text).
_PERL_SPACE = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WHITESPACE = re.compile(f"[{_PERL_SPACE}]+")
_BLANK_FACTOR = re.compile(r"[ |]\|")


def _normalise_for_cleaning(line, strip_bars):
    if strip_bars:
        line = line.replace("|", "")
    return _WHITESPACE.sub(" ", line).strip(" ")


def clean_corpus(src_in, tgt_in, src_out, tgt_out, min_len=1, max_len=175, ratio=1.5, max_word_length=1000):
    """clean-corpus-n.perl: keeps pairs with min_len..max_len tokens on both sides and a length ratio
    (both directions) of at most `ratio`; drops empty sides and words over max_word_length characters.

    As the Perl script does, '|' is deleted unless the first pair contains one (factored corpus; a
    blank factor is then an error), and whitespace (Perl's \s) is normalised in the output.
    Returns (pairs_in, pairs_out, Counter of drop reasons).
    """
    dropped = Counter()
    n_in = n_out = 0
    long_word = re.compile(f"[^{_PERL_SPACE}|]{{{max_word_length + 1}}}")
    src_lines, tgt_lines = iter_lines(src_in), iter_lines(tgt_in)
    strip_bars = True
    with open(src_out, "w", encoding="utf-8", newline="\n") as src_o, \
            open(tgt_out, "w", encoding="utf-8", newline="\n") as tgt_o:
        for src in src_lines:
            tgt = next(tgt_lines, None)
            if tgt is None:
                raise PrepError(f"line-count mismatch: {tgt_in} is shorter than {src_in} ({n_in} lines)")
            n_in += 1
            if n_in == 1:
                strip_bars = "|" not in src and "|" not in tgt
            src = _normalise_for_cleaning(src, strip_bars)
            tgt = _normalise_for_cleaning(tgt, strip_bars)
            if not src or not tgt:
                dropped["empty"] += 1
                continue
            n_src, n_tgt = len(src.split(" ")), len(tgt.split(" "))
            if n_src > max_len or n_tgt > max_len:
                dropped[f"over {max_len} tokens"] += 1
                continue
            if n_src < min_len or n_tgt < min_len:
                dropped[f"under {min_len} tokens"] += 1
                continue
            if n_src / n_tgt > ratio or n_tgt / n_src > ratio:
                dropped[f"length ratio over {ratio}"] += 1
                continue
            if long_word.search(src) or long_word.search(tgt):
                dropped[f"word over {max_word_length} characters"] += 1
                continue
            for path, line in ((src_in, src), (tgt_in, tgt)):
                if not strip_bars and _BLANK_FACTOR.search(line):
                    raise PrepError(f"{path}: line {n_in}: blank factor in a factored corpus: {line[:80]!r}")
            src_o.write(src + "\n")
            tgt_o.write(tgt + "\n")
            n_out += 1
        if next(tgt_lines, None) is not None:
            raise PrepError(f"line-count mismatch: {tgt_in} is longer than {src_in} ({n_in} lines)")
    return n_in, n_out, dropped


def describe_cleaning(n_in, n_out, dropped):
    reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(dropped.items()))
    return f"{n_in} pairs in, {n_out} kept" + (f" (dropped: {reasons})" if reasons else "")
