"""Tiny corpora in the exact raw layouts of the three benchmarks (IWSLT'14 release archive, WMT'14
archives with .sgm test sets, Multi30k .gz files), with the facts the tests check against."""
import gzip
import io
import random
import tarfile
from pathlib import Path

DE_WORDS = ["Haus", "Katze", "Hund", "rot", "blau", "groß", "klein", "läuft", "sieht", "Mann", "Frau",
            "Kind", "Baum", "Straße", "schnell", "langsam", "spielt", "der", "die", "das", "ein", "eine"]
EN_WORDS = ["house", "Cat", "dog", "red", "blue", "big", "small", "runs", "sees", "Man", "woman",
            "child", "tree", "street", "fast", "slow", "plays", "the", "a", "an", "London", "Berlin"]

IWSLT_TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
                   "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")


def words(rng, vocabulary, n):
    return " ".join(rng.choice(vocabulary) for _ in range(n))


def add_bytes(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def iwslt_train_pairs(seed=0, n_regular=120):
    """(de, en, kept) in file order: plain-word sentences (tokenisation leaves them as they are) plus
    the clean-corpus-n boundary cases."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n_regular):
        n = rng.randint(3, 9)
        pairs.append((words(rng, DE_WORDS, n), words(rng, EN_WORDS, n + rng.choice([-1, 0, 1])), True))
        if i == 10:
            pairs.append((words(rng, DE_WORDS, 176), words(rng, EN_WORDS, 170), False))  # 176 tokens
        if i == 20:
            pairs.append((words(rng, DE_WORDS, 175), words(rng, EN_WORDS, 175), True))  # 175 tokens
        if i == 30:
            pairs.append((words(rng, DE_WORDS, 16), words(rng, EN_WORDS, 10), False))  # ratio 1.6
        if i == 40:
            pairs.append((words(rng, DE_WORDS, 10), words(rng, EN_WORDS, 15), True))  # ratio 1.5
        if i == 50:
            pairs.append(("", words(rng, EN_WORDS, 4), False))  # empty side
    return pairs


def iwslt_talk_header(talk, lang):
    title = {"de": "Ein Vortrag über Katzen", "en": "A talk about cats"}[lang]
    return [f"<url>http://www.ted.com/talks/talk{talk}.html</url>",
            "<keywords>talks, cats, science</keywords>",
            f"<talkid>{talk}</talkid>",
            f"<title>Jane Doe: {title} {talk}</title>",
            f"<description>TED Talk Subtitles and Transcript: {title}</description>"]


def iwslt_test_segments(seed=1):
    """{test set: [(de, en)]}; the first English segment of dev2010 has a ’ apostrophe."""
    rng = random.Random(seed)
    sets = {}
    for k, name in enumerate(IWSLT_TEST_SETS):
        sets[name] = [(words(rng, DE_WORDS, rng.randint(2, 8)), words(rng, EN_WORDS, rng.randint(2, 8)))
                      for _ in range(3 + k)]
    de, en = sets["IWSLT14.TED.dev2010"][0]
    sets["IWSLT14.TED.dev2010"][0] = (de, "the cat’s house")
    return sets


def iwslt_xml(name, lang, segments):
    lines = ['<?xml version="1.0" encoding="UTF-8"?>', '<mteval>',
             f'<{"srcset" if lang == "de" else "refset"} setid="{name}" srclang="german" trglang="english">',
             '<doc docid="1" genre="lectures">', "<url>http://www.ted.com/talks/x.html</url>",
             "<talkid>1</talkid>", "<title>Ein Titel</title>"]
    lines += [f'<seg id="{i}"> {text} </seg>' for i, text in enumerate(segments, 1)]
    lines += ["</doc>", "</srcset>" if lang == "de" else "</refset>", "</mteval>"]
    return "\n".join(lines) + "\n"


def make_iwslt_archive(path, train_pairs=None, test_sets=None, talks=3, xml_override=None, drop=()):
    """Writes a de-en.tgz laid out like the IWSLT'14 release; returns its path.

    The train pairs are spread over `talks` talks, each preceded by its tag lines. xml_override maps
    a member name to replacement text; members named in `drop` are left out.
    """
    train_pairs = iwslt_train_pairs() if train_pairs is None else train_pairs
    test_sets = iwslt_test_segments() if test_sets is None else test_sets
    per_talk = -(-len(train_pairs) // talks)
    files = {}
    for lang_index, lang in enumerate(("de", "en")):
        lines = []
        for talk in range(talks):
            lines += iwslt_talk_header(talk + 1, lang)
            lines += [pair[lang_index] for pair in train_pairs[talk * per_talk:(talk + 1) * per_talk]]
        files[f"de-en/train.tags.de-en.{lang}"] = "\n".join(lines) + "\n"
        for name, segments in test_sets.items():
            files[f"de-en/{name}.de-en.{lang}.xml"] = iwslt_xml(name, lang, [s[lang_index] for s in segments])
    files["de-en/README"] = "IWSLT 2014 German-English\n"
    files.update(xml_override or {})
    with tarfile.open(path, "w:gz") as tar:
        for name, text in sorted(files.items()):
            if name not in drop:
                add_bytes(tar, name, text.encode("utf-8"))
    return Path(path)


# ------------------------------------------------------------------------------------------- Multi30k

MULTI30K_SPLITS = {"train": 200, "val": 20, "test_2016_flickr": 15, "test_2017_flickr": 12}


def multi30k_pairs(split, n, seed=0):
    rng = random.Random(f"{seed}-{split}")
    return [(words(rng, DE_WORDS, rng.randint(3, 10)).capitalize() + ".",
             words(rng, EN_WORDS, rng.randint(3, 10)).capitalize() + ".") for _ in range(n)]


def make_multi30k_raw_dir(directory, splits=None):
    """Writes {split}.{de,en}.gz as in multi30k/dataset data/task1/raw; returns {split: pairs}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    for split, n in (splits or MULTI30K_SPLITS).items():
        pairs = multi30k_pairs(split, n)
        for lang_index, lang in enumerate(("de", "en")):
            text = "".join(pair[lang_index] + "\n" for pair in pairs).encode("utf-8")
            with open(directory / f"{split}.{lang}.gz", "wb") as raw:
                with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
                    gz.write(text)
        written[split] = pairs
    return written


# ------------------------------------------------------------------------------------------- WMT'14

WMT_CORPORA = {  # archive -> member prefix, as in statmt.org's WMT'14 downloads
    "training-parallel-europarl-v7.tgz": "training/europarl-v7.de-en",
    "training-parallel-commoncrawl.tgz": "commoncrawl.de-en",
    "training-parallel-nc-v9.tgz": "training/news-commentary-v9.de-en",
}


def wmt_sgm(lang, kind, segments):
    setid = "newstest2014"
    head = (f'<{kind}set setid="{setid}" srclang="any" trglang="{lang}">' if kind != "src"
            else f'<srcset setid="{setid}" srclang="any">')
    lines = [head, '<doc sysid="ref" docid="1" genre="news" origlang="en">', "<p>"]
    lines += [f'<seg id="{i}">{text}</seg>' for i, text in enumerate(segments, 1)]
    lines += ["</p>", "</doc>", f"</{kind}set>"]
    return "\n".join(lines) + "\n"


def wmt_pairs(name, n, seed=0):
    rng = random.Random(f"{seed}-{name}")
    return [(words(rng, EN_WORDS, rng.randint(3, 10)).capitalize() + ".",
             words(rng, DE_WORDS, rng.randint(3, 10)).capitalize() + ".") for _ in range(n)]


def make_wmt_raw_dir(directory, sizes=(60, 40, 30), n_valid=12, n_test=10, override=None):
    """Writes the five WMT'14 archives as statmt.org serves them; returns {corpus: pairs}."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = {}
    override = override or {}
    for (archive, prefix), n in zip(WMT_CORPORA.items(), sizes):
        pairs = wmt_pairs(prefix, n)
        if prefix == "commoncrawl.de-en":  # the kind of text normalisation exists for
            pairs[0] = ("He said «hello» – twice…", "Er sagte „hallo“ – zweimal…")
        with tarfile.open(directory / archive, "w:gz") as tar:
            for lang_index, lang in enumerate(("en", "de")):
                text = override.get(f"{prefix}.{lang}", "".join(p[lang_index] + "\n" for p in pairs))
                add_bytes(tar, f"{prefix}.{lang}", text.encode("utf-8"))
        written[prefix] = pairs
    valid = wmt_pairs("newstest2013", n_valid)
    test = wmt_pairs("newstest2014", n_test)
    test[0] = ("The cat’s house.", "Das Haus der Katze.")
    with tarfile.open(directory / "dev.tgz", "w:gz") as tar:
        for lang_index, lang in enumerate(("en", "de")):
            add_bytes(tar, f"dev/newstest2013.{lang}", "".join(p[lang_index] + "\n" for p in valid).encode())
    with tarfile.open(directory / "test-full.tgz", "w:gz") as tar:
        for lang_index, (lang, kind) in enumerate((("en", "src"), ("de", "ref"))):
            name = f"test-full/newstest2014-deen-{kind}.{lang}.sgm"
            text = override.get(name, wmt_sgm(lang, kind, [p[lang_index] for p in test]))
            add_bytes(tar, name, text.encode("utf-8"))
    written["newstest2013"], written["newstest2014"] = valid, test
    return written
