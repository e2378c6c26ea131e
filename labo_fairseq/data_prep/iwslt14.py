"""IWSLT'14 German-English, prepared exactly as fairseq's examples/translation/prepare-iwslt14.sh does.

Steps (counts are printed for each): tag lines dropped / tags stripped from the train files; Moses
tokenisation; clean-corpus-n (ratio 1.5, 1..175 tokens); lowercasing; valid = every 23rd cleaned
train pair, train = the rest; test = dev2010 + TEDX.dev2012 + tst2010 + tst2011 + tst2012 (<seg>
lines, ’ -> ', tokenised, lowercased); joint BPE learned on train.de + train.en and applied to all
splits; fairseq-preprocess --source-lang de --target-lang en (separate dictionaries, as fairseq does).
The data-bin also keeps the test set's English segments as published (test.raw.en, listed in
prepare.json's "raw_references") for sacreBLEU; the text is lowercased, so scores are case-blind.
"""
from pathlib import Path

from . import common, noise
from .common import PrepError, Timer, log
from .moses import MosesPipeline, clean_corpus, describe_cleaning, lowercase
from .subwords import BpeSegmenter, learn_bpe, warn_shortfall

TAG = "prepare-iwslt14"
URL = "http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz"
SRC, TGT = "de", "en"
NAME = "iwslt14.tokenized.de-en"
TEST_SETS = ("IWSLT14.TED.dev2010", "IWSLT14.TEDX.dev2012", "IWSLT14.TED.tst2010",
             "IWSLT14.TED.tst2011", "IWSLT14.TED.tst2012")
VALID_EVERY = 23
DROPPED_TAGS = ("<url>", "<talkid>", "<keywords>")
STRIPPED_TAGS = ("<title>", "</title>", "<description>", "</description>")


def train_text_lines(lines):
    """grep -v '<url>' / '<talkid>' / '<keywords>', then delete the title/description tags."""
    for line in lines:
        if any(tag in line for tag in DROPPED_TAGS):
            continue
        for tag in STRIPPED_TAGS:
            line = line.replace(tag, "")
        yield line


def archive_members():
    members = [f"de-en/train.tags.de-en.{lang}" for lang in (SRC, TGT)]
    members += [f"de-en/{name}.de-en.{lang}.xml" for name in TEST_SETS for lang in (SRC, TGT)]
    return members


def parse_args(argv=None, prog="prepare-iwslt14.sh"):
    parser = common.argument_parser(prog, __doc__)
    raw = parser.add_mutually_exclusive_group()
    raw.add_argument("--raw-dir", type=Path,
                     help="directory holding the IWSLT'14 release de-en.tgz (default: download it)")
    raw.add_argument("--archive", type=Path,
                     help=f"the release archive itself, under any name (default: download {URL})")
    parser.add_argument("--url", default=URL, help="where to download the archive from without --archive")
    parser.add_argument("--vocab", "--bpe-tokens", dest="bpe_tokens", type=int, default=10000,
                        help="BPE merge operations; --bpe-tokens is the older name (default: %(default)s)")
    common.add_output_args(parser, NAME, "tokenisation, BPE and binarisation")
    noise.add_arguments(parser)
    args = parser.parse_args(argv)
    noise.check_arguments(parser, args)
    common.check_sizes(parser, TAG, args, args.bpe_tokens)
    if args.raw_dir is not None:
        args.archive = args.raw_dir / "de-en.tgz"
    return args


def build(args, staging, text_dir, bin_dir):
    tmp = staging.work
    archive, shown = args.archive, args.archive
    if archive is None:
        log(TAG, f"downloading {args.url}")
        archive = common.download(args.url, tmp / "de-en.tgz",
                                  "download it where the network allows and pass --archive PATH")
        shown = args.url
    timer = Timer()
    files = dict(zip(archive_members(), common.extract_members(archive, archive_members(), tmp / "orig", shown)))
    names = {member: common.member_name(shown, member) for member in files}
    log(TAG, f"extracted {len(files)} files from {shown} ({timer})")

    n_tok = {}
    for lang in (SRC, TGT):
        timer = Timer()
        member = f"de-en/train.tags.de-en.{lang}"
        n_raw = common.count_lines(files[member], names[member])
        tokeniser = MosesPipeline(lang, ["tokenize"])
        n_tok[lang] = common.write_lines(
            tmp / f"train.tags.tok.{lang}",
            common.map_lines(tokeniser, train_text_lines(common.iter_lines(files[member], shown=names[member])),
                             args.workers))
        log(TAG, f"train.{lang}: {n_raw} lines, {n_raw - n_tok[lang]} tag lines dropped, {n_tok[lang]} tokenised "
                 f"({timer})")
    common.check_counts(names[f"de-en/train.tags.de-en.{SRC}"], n_tok[SRC], names[f"de-en/train.tags.de-en.{TGT}"],
                        n_tok[TGT], "lines without tags")

    n_in, n_clean, dropped = clean_corpus(tmp / f"train.tags.tok.{SRC}", tmp / f"train.tags.tok.{TGT}",
                                          tmp / f"train.clean.{SRC}", tmp / f"train.clean.{TGT}",
                                          min_len=1, max_len=175, ratio=1.5)
    log(TAG, f"clean-corpus-n (1..175 tokens, ratio 1.5): {describe_cleaning(n_in, n_clean, dropped)}")
    if n_clean == 0:
        raise PrepError(f"no training pairs left after cleaning {names[f'de-en/train.tags.de-en.{SRC}']} "
                        f"(1..175 tokens, length ratio 1.5)")

    for lang in (SRC, TGT):
        lines = [lowercase(line) for line in common.iter_lines(tmp / f"train.clean.{lang}")]
        common.write_lines(tmp / f"valid.{lang}",
                           (line for n, line in enumerate(lines, 1) if n % VALID_EVERY == 0))
        common.write_lines(tmp / f"train.{lang}",
                           (line for n, line in enumerate(lines, 1) if n % VALID_EVERY != 0))
    n_valid = n_clean // VALID_EVERY
    log(TAG, f"lowercased; valid = every {VALID_EVERY}rd pair: {n_clean - n_valid} train, {n_valid} valid")

    counts = {}
    raw_test = []  # the English segments as published, for sacreBLEU
    for lang in (SRC, TGT):
        pipeline = MosesPipeline(lang, ["apostrophe", "tokenize", "lowercase"])
        test_lines = []
        for name in TEST_SETS:
            member = f"de-en/{name}.de-en.{lang}.xml"
            segments = common.extract_segments(files[member], names[member])
            counts.setdefault(name, {})[lang] = len(segments)
            test_lines.extend(common.map_lines(pipeline, segments, args.workers))
            if lang == TGT:
                raw_test.extend(segments)
        common.write_lines(tmp / f"test.{lang}", test_lines)
    for name in TEST_SETS:
        if counts[name][SRC] != counts[name][TGT]:
            raise PrepError(f"segment-count mismatch in {name}: {counts[name][SRC]} {SRC} segments, "
                            f"{counts[name][TGT]} {TGT}")
    n_test = sum(c[SRC] for c in counts.values())
    log(TAG, "test: " + " + ".join(f"{name.split('.', 1)[1]} {c[SRC]}" for name, c in counts.items())
        + f" = {n_test} pairs")

    timer = Timer()
    n_merges = learn_bpe([tmp / f"train.{SRC}", tmp / f"train.{TGT}"], text_dir / "code", args.bpe_tokens, tmp)
    log(TAG, f"learned {n_merges} BPE merges on train.{SRC} + train.{TGT} ({timer})")
    warn_shortfall(TAG, args.bpe_tokens, n_merges, "BPE merges", shown)
    timer = Timer()
    segmenter = BpeSegmenter(text_dir / "code")
    for split in ("train", "valid", "test"):
        for lang in (SRC, TGT):
            common.map_file(segmenter, tmp / f"{split}.{lang}", text_dir / f"{split}.{lang}", args.workers)
    log(TAG, f"applied BPE to train/valid/test ({timer})")
    noise_record = noise.apply_to_training_target(args, text_dir, TGT, TAG)

    timer = Timer()
    sizes = common.binarise(text_dir, bin_dir, SRC, TGT, ["test"], joined=False, workers=args.workers,
                            shown=staging.shown(bin_dir))
    log(TAG, f"binarised into data-bin/{NAME}: dictionaries {SRC} {sizes[SRC]} types, "
             f"{TGT} {sizes[TGT]} types ({timer})")
    raw_refs = common.write_raw_references(bin_dir, TGT, {"test": raw_test})
    common.write_prepare_json(bin_dir, {
        "dataset": "iwslt14", "source_lang": SRC, "target_lang": TGT, "subwords": "bpe",
        "bpe_merges": args.bpe_tokens, "bpe_merges_learned": n_merges, "dictionary_sizes": sizes,
        "tokenizer": "moses", "moses_escape": True, "lowercase": True,
        "joined_dictionary": False, "test_sets": {"test": list(TEST_SETS)}, "raw_references": raw_refs,
        "pairs": {"train": n_clean - n_valid, "valid": n_valid, "test": n_test}, **noise_record,
    })


main = common.command(TAG, NAME, parse_args, build)


if __name__ == "__main__":
    raise SystemExit(main())
