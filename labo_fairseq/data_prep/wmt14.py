"""WMT'14 English-German after fairseq's examples/translation/prepare-wmt14en2de.sh (--icml17 corpora:
Europarl v7 + CommonCrawl + News Commentary v9).

Steps (counts are printed for each): train corpora through Moses normalize-punctuation,
remove-non-printing-char and tokenizer -a (aggressive hyphen splitting); valid = newstest2013 and
test = newstest2014 (<seg> lines of the .sgm files), ’ -> ', tokenizer -a; joint subwords learned
on train.en + train.de: a sentencepiece model (default, 32k) or subword-nmt BPE (40k merges, the
recipe's); clean-corpus-n on the subworded train set (ratio 1.5, 1..250 tokens); fairseq-preprocess
--joined-dictionary (shared embeddings). Text is not lowercased. The data-bin keeps the German of
newstest2013/2014 as published ({valid,test}.raw.de; for the test set, the text of the .sgm
segments), listed in prepare.json's "raw_references", for sacreBLEU.

Differences from fairseq's script: its valid set is every 100th train pair (it downloads
newstest2013 but does not use it); here valid is newstest2013, and all train pairs are train.
"""
from pathlib import Path

from . import common, noise
from .common import PrepError, Timer, log
from .moses import MosesPipeline, clean_corpus, describe_cleaning
from .subwords import joint_subwords

TAG = "prepare-wmt14en2de"
SRC, TGT = "en", "de"
NAME = "wmt14_en_de"
NEWS_COMMENTARY = {
    "v9": ("http://statmt.org/wmt14/training-parallel-nc-v9.tgz", "training/news-commentary-v9.de-en"),
    "v12": ("http://data.statmt.org/wmt17/translation-task/training-parallel-nc-v12.tgz",
            "training/news-commentary-v12.de-en"),
}
TRAIN_CORPORA = [
    ("http://statmt.org/wmt13/training-parallel-europarl-v7.tgz", "training/europarl-v7.de-en"),
    ("http://statmt.org/wmt13/training-parallel-commoncrawl.tgz", "commoncrawl.de-en"),
]
DEV_URL = "http://data.statmt.org/wmt17/translation-task/dev.tgz"
TEST_URL = "http://statmt.org/wmt14/test-full.tgz"
VALID_MEMBERS = {lang: f"dev/newstest2013.{lang}" for lang in (SRC, TGT)}
TEST_MEMBERS = {SRC: "test-full/newstest2014-deen-src.en.sgm", TGT: "test-full/newstest2014-deen-ref.de.sgm"}
DEFAULT_VOCAB = {"spm": 32000, "bpe": 40000}


def parse_args(argv=None, prog="prepare-wmt14en2de.sh"):
    parser = common.argument_parser(prog, __doc__)
    parser.add_argument("--raw-dir", type=Path,
                        help="directory with the statmt.org archives (training-parallel-*.tgz, dev.tgz, "
                             "test-full.tgz) or their extracted files (default: <out>/orig/wmt14, "
                             "downloading missing archives)")
    parser.add_argument("--subwords", choices=["spm", "bpe"], default="spm",
                        help="joint sentencepiece model or subword-nmt BPE (default: %(default)s)")
    parser.add_argument("--vocab", type=int,
                        help="sentencepiece vocabulary size (default 32000) or BPE merges (default 40000)")
    parser.add_argument("--spm-type", choices=["unigram", "bpe"], default="unigram",
                        help="sentencepiece model type (default: %(default)s)")
    parser.add_argument("--news-commentary", choices=sorted(NEWS_COMMENTARY), default="v9",
                        help="News Commentary release: v9 is WMT'14's (default), v12 what fairseq's "
                             "script uses without --icml17")
    common.add_output_args(parser, NAME, "normalisation/tokenisation, subwords and binarisation")
    noise.add_arguments(parser)
    args = parser.parse_args(argv)
    noise.check_arguments(parser, args)
    if args.vocab is None:
        args.vocab = DEFAULT_VOCAB[args.subwords]
    common.check_sizes(parser, TAG, args, args.vocab)
    return args


def needed_files(args):
    """[(archive url, member)] for every raw file the recipe reads."""
    corpora = TRAIN_CORPORA + [NEWS_COMMENTARY[args.news_commentary]]
    needed = [(url, f"{prefix}.{lang}") for url, prefix in corpora for lang in (SRC, TGT)]
    needed += [(DEV_URL, VALID_MEMBERS[lang]) for lang in (SRC, TGT)]
    needed += [(TEST_URL, TEST_MEMBERS[lang]) for lang in (SRC, TGT)]
    return needed


def raw_dir_of(args):
    return args.raw_dir or (args.out / "orig" / "wmt14")


def gather_raw_files(args, dest_dir, staging):
    """({member: path}, {member: name for messages}): extracted files in the raw directory are used as
    they are, otherwise the members are extracted from the archives there (and named as members of
    the archive); archives are downloaded only into the default raw directory."""
    raw_dir = raw_dir_of(args)
    by_archive = {}
    paths, names = {}, {}
    for url, member in needed_files(args):
        if (raw_dir / member).is_file():
            paths[member] = names[member] = raw_dir / member
        else:
            by_archive.setdefault(url, []).append(member)
    for url, members in by_archive.items():
        archive = raw_dir / url.rsplit("/", 1)[1]
        if not archive.exists():
            if args.raw_dir is not None:
                raise PrepError(f"{archive}: file not found (nor extracted {', '.join(members)} in {raw_dir})")
            try:
                staging.makedirs(raw_dir)
            except OSError as e:
                raise PrepError(f"cannot write to {raw_dir}: {e.strerror or e}") from None
            log(TAG, f"downloading {url}")
            common.download(url, archive, "put the archives in a directory and pass --raw-dir DIR")
        paths.update(zip(members, common.extract_members(archive, members, dest_dir)))
        names.update((member, common.member_name(archive, member)) for member in members)
        log(TAG, f"extracted {', '.join(members)} from {archive}")
    return paths, names


def build(args, staging, text_dir, bin_dir):
    tmp = staging.work
    raw, names = gather_raw_files(args, tmp / "orig", staging)

    corpora = TRAIN_CORPORA + [NEWS_COMMENTARY[args.news_commentary]]
    for _, prefix in corpora:
        sides = (f"{prefix}.{SRC}", f"{prefix}.{TGT}")
        common.check_parallel(raw[sides[0]], raw[sides[1]], (names[sides[0]], names[sides[1]]))
    for lang in (SRC, TGT):
        pipeline = MosesPipeline(lang, ["normalize", "remove-non-printing", "tokenize-aggressive"])
        with common.writing(tmp / f"train.tok.{lang}"), \
                open(tmp / f"train.tok.{lang}", "w", encoding="utf-8", newline="\n") as out:
            for _, prefix in corpora:
                timer = Timer()
                n = 0
                member = f"{prefix}.{lang}"
                lines = common.iter_lines(raw[member], shown=names[member])
                for line in common.map_lines(pipeline, lines, args.workers):
                    out.write(line + "\n")
                    n += 1
                log(TAG, f"{prefix}.{lang}: {n} lines normalised and tokenised ({timer})")

    counts = {}
    raw_targets = {}  # newstest2013/2014 German as published (the .sgm segments' text), for sacreBLEU
    for split, members, extract in (("valid", VALID_MEMBERS, lambda path, name: common.iter_lines(path, shown=name)),
                                    ("test", TEST_MEMBERS, common.extract_segments)):
        for lang in (SRC, TGT):
            pipeline = MosesPipeline(lang, ["apostrophe", "tokenize-aggressive"])
            lines = list(extract(raw[members[lang]], names[members[lang]]))
            if lang == TGT:
                raw_targets[split] = lines
            counts[(split, lang)] = common.write_lines(
                tmp / f"{split}.tok.{lang}", common.map_lines(pipeline, lines, args.workers))
        common.check_counts(names[members[SRC]], counts[(split, SRC)], names[members[TGT]], counts[(split, TGT)],
                            "segments" if split == "test" else "lines")
        log(TAG, f"{split} ({Path(members[SRC]).name.split('.')[0].split('-')[0]}): "
                 f"{counts[(split, SRC)]} pairs tokenised")

    train_tok = [tmp / f"train.tok.{SRC}", tmp / f"train.tok.{TGT}"]
    segmenter, subword_record = joint_subwords(args, train_tok, text_dir, tmp, TAG,
                                               f"the training corpora in {raw_dir_of(args)}")
    timer = Timer()
    for split in ("train", "valid", "test"):
        for lang in (SRC, TGT):
            dest = (tmp / f"train.sub.{lang}") if split == "train" else (text_dir / f"{split}.{lang}")
            common.map_file(segmenter, tmp / f"{split}.tok.{lang}", dest, args.workers)
    log(TAG, f"applied subwords to train, valid, test ({timer})")

    n_in, n_train, dropped = clean_corpus(tmp / f"train.sub.{SRC}", tmp / f"train.sub.{TGT}",
                                          text_dir / f"train.{SRC}", text_dir / f"train.{TGT}",
                                          min_len=1, max_len=250, ratio=1.5)
    log(TAG, f"clean-corpus-n on subworded train (1..250 tokens, ratio 1.5): "
             f"{describe_cleaning(n_in, n_train, dropped)}")
    if n_train == 0:
        raise PrepError(f"no training pairs left after cleaning (1..250 subwords, length ratio 1.5) "
                        f"{', '.join(str(names[f'{p}.{SRC}']) for _, p in corpora)}")
    noise_record = noise.apply_to_training_target(args, text_dir, TGT, TAG)

    timer = Timer()
    sizes = common.binarise(text_dir, bin_dir, SRC, TGT, ["test"], joined=True, workers=args.workers,
                            shown=staging.shown(bin_dir))
    log(TAG, f"binarised into data-bin/{NAME}: joined dictionary {sizes[SRC]} types ({timer})")
    raw_refs = common.write_raw_references(bin_dir, TGT, raw_targets)
    common.write_prepare_json(bin_dir, {
        "dataset": "wmt14_en_de", "source_lang": SRC, "target_lang": TGT, "subwords": args.subwords,
        **subword_record, "dictionary_sizes": sizes,
        "news_commentary": args.news_commentary, "tokenizer": "moses", "moses_aggressive_dash_splits": True,
        "moses_escape": True, "lowercase": False, "joined_dictionary": True,
        "test_sets": {"valid": "newstest2013", "test": "newstest2014"}, "raw_references": raw_refs,
        "pairs": {"train": n_train, "valid": counts[("valid", SRC)], "test": counts[("test", SRC)]},
        **noise_record,
    })


main = common.command(TAG, NAME, parse_args, build)


if __name__ == "__main__":
    raise SystemExit(main())
