"""Multi30k task-1 German-English: lowercase, Moses punctuation normalisation and tokenisation (the
multi30k dataset repository's scripts/task1-tokenize.sh order), joint subwords (subword-nmt BPE or
sentencepiece), fairseq-preprocess with a joined dictionary.

Every requested test set becomes its own test split, named as fairseq-preprocess names the prefixes
of --testpref: test, test1, test2, ...; test-sets.tsv records which raw set each one is, one
line per split: <split><TAB><raw test set name>.
No pair is dropped (no length cleaning), so the lines stay aligned with the dataset's images.
The data-bin keeps the raw English of valid and every test split (<split>.raw.en, listed in
prepare.json's "raw_references") for sacreBLEU; the text is lowercased, so scores are case-blind.
"""
from pathlib import Path

from . import common, noise
from .common import PrepError, Timer, log
from .moses import MosesPipeline
from .subwords import joint_subwords

TAG = "prepare-multi30k"
URL = "https://github.com/multi30k/dataset/raw/master/data/task1/raw/{file}"
SRC, TGT = "de", "en"
NAME = "multi30k.de-en"
DEFAULT_VOCAB = 8000
# the task-1 test sets of the multi30k/dataset repository; "--test-sets all" downloads these
PUBLISHED_TEST_SETS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco", "test_2018_flickr")


def test_split_names(n):
    return ["test" if i == 0 else f"test{i}" for i in range(n)]


def parse_args(argv=None, prog="prepare-multi30k.sh"):
    parser = common.argument_parser(prog, __doc__)
    parser.add_argument("--raw-dir", type=Path,
                        help="directory with train/val/test_*.{de,en}.gz (default: <out>/orig/multi30k, "
                             "downloading missing files from the multi30k/dataset repository)")
    parser.add_argument("--url", default=URL, help="download location pattern, {file} is the file name")
    parser.add_argument("--test-sets", default="test_2016_flickr",
                        help="comma-separated raw test sets, in split order, or 'all': every test_* pair in "
                             "--raw-dir (without --raw-dir: the published ones) (default: %(default)s)")
    parser.add_argument("--subwords", choices=["bpe", "spm"], default="bpe",
                        help="joint subword-nmt BPE or a joint sentencepiece model (default: %(default)s)")
    parser.add_argument("--vocab", type=int, default=DEFAULT_VOCAB,
                        help="BPE merges, or sentencepiece vocabulary size (default: %(default)s)")
    parser.add_argument("--spm-type", choices=["unigram", "bpe"], default="unigram",
                        help="sentencepiece model type (default: %(default)s)")
    common.add_output_args(parser, NAME)
    noise.add_arguments(parser)
    args = parser.parse_args(argv)
    noise.check_arguments(parser, args)
    try:
        args.url.format(file="train.de.gz")
    except KeyError as e:
        parser.error(f"--url {args.url}: unknown field {{{e.args[0]}}}; the only field is {{file}}")
    except (IndexError, ValueError, AttributeError, TypeError) as e:
        parser.error(f"--url {args.url}: not a valid pattern ({e}); the only field is {{file}}")
    args.test_sets = [name.strip() for name in args.test_sets.split(",") if name.strip()]
    if not args.test_sets:
        parser.error("--test-sets needs at least one name")
    repeated = sorted({name for name in args.test_sets if args.test_sets.count(name) > 1})
    if repeated:
        parser.error(f"--test-sets names {', '.join(repeated)} more than once")
    if args.test_sets == ["all"]:
        args.test_sets = all_test_sets(args.raw_dir)
        if not args.test_sets:
            parser.error(f"--test-sets all: {args.raw_dir} has no test_*.{SRC}.gz with a matching test_*.{TGT}.gz")
    common.check_sizes(parser, TAG, args, args.vocab)
    return args


def all_test_sets(raw_dir):
    """Every test set with both sides in raw_dir (sorted by name), or the published ones."""
    if raw_dir is None:
        return list(PUBLISHED_TEST_SETS)
    names = sorted(p.name[: -len(f".{SRC}.gz")] for p in Path(raw_dir).glob(f"test_*.{SRC}.gz"))
    return [name for name in names if (Path(raw_dir) / f"{name}.{TGT}.gz").exists()]


def raw_files(args, raw_names, staging):
    """Paths of the raw .gz files; downloads missing ones into the default raw directory only."""
    raw_dir = args.raw_dir or (args.out / "orig" / "multi30k")
    paths = {name: raw_dir / f"{name}.gz" for name in raw_names}
    missing = [name for name, path in paths.items() if not path.exists()]
    if missing and args.raw_dir is not None:
        raise PrepError(f"{paths[missing[0]]}: file not found (expected {', '.join(n + '.gz' for n in missing)} "
                        f"in {raw_dir})")
    if missing:
        try:
            staging.makedirs(raw_dir)
        except OSError as e:
            raise PrepError(f"cannot write to {raw_dir}: {e.strerror or e}") from None
        for name in missing:
            url = args.url.format(file=f"{name}.gz")
            log(TAG, f"downloading {url}")
            common.download(url, paths[name],
                            "put the files in a directory and pass --raw-dir DIR")
    return paths


def build(args, staging, text_dir, bin_dir):
    raw_splits = ["train", "val"] + args.test_sets
    splits = dict(zip(raw_splits, ["train", "valid"] + test_split_names(len(args.test_sets))))
    paths = raw_files(args, [f"{name}.{lang}" for name in raw_splits for lang in (SRC, TGT)], staging)
    tok_dir = text_dir / "tok"
    tok_dir.mkdir(parents=True)
    counts = {}
    for raw_name, split in splits.items():
        timer = Timer()
        n = {lang: common.map_file(MosesPipeline(lang, ["lowercase", "normalize", "tokenize"]),
                                   paths[f"{raw_name}.{lang}"], tok_dir / f"{split}.{lang}", args.workers)
             for lang in (SRC, TGT)}
        counts[split] = common.check_counts(paths[f"{raw_name}.{SRC}"], n[SRC], paths[f"{raw_name}.{TGT}"], n[TGT])
        if counts[split] == 0:
            raise PrepError(f"{paths[f'{raw_name}.{SRC}']}: no lines")
        log(TAG, f"{raw_name} -> {split}: {counts[split]} pairs tokenised ({timer})")
    empty = sum(1 for line in common.iter_lines(tok_dir / f"train.{TGT}") if not line)
    if empty == counts["train"]:
        raise PrepError(f"{paths['train.' + TGT]}: every line is empty")

    train_tok = [tok_dir / f"train.{SRC}", tok_dir / f"train.{TGT}"]
    segmenter, subword_record = joint_subwords(args, train_tok, text_dir, staging.work, TAG,
                                               f"{paths['train.' + SRC]} and {paths['train.' + TGT]}")
    timer = Timer()
    for split in splits.values():
        for lang in (SRC, TGT):
            common.map_file(segmenter, tok_dir / f"{split}.{lang}", text_dir / f"{split}.{lang}", args.workers)
    log(TAG, f"applied subwords to {', '.join(splits.values())} ({timer})")
    common.write_lines(text_dir / "test-sets.tsv",
                       [f"{split}\t{raw}" for raw, split in splits.items() if split.startswith("test")])

    noise_record = noise.apply_to_training_target(args, text_dir, TGT, TAG)
    timer = Timer()
    test_splits = test_split_names(len(args.test_sets))
    sizes = common.binarise(text_dir, bin_dir, SRC, TGT, test_splits, joined=True, workers=args.workers,
                            shown=staging.shown(bin_dir))
    log(TAG, f"binarised into data-bin/{NAME}: joined dictionary {sizes[SRC]} types ({timer})")
    raw_refs = common.write_raw_references(bin_dir, TGT, {
        split: common.iter_lines(paths[f"{raw}.{TGT}"]) for raw, split in splits.items() if split != "train"})
    common.write_prepare_json(bin_dir, {
        "dataset": "multi30k", "source_lang": SRC, "target_lang": TGT, "subwords": args.subwords,
        **subword_record, "dictionary_sizes": sizes,
        "tokenizer": "moses", "moses_escape": True, "lowercase": True, "joined_dictionary": True,
        "test_sets": {split: raw for raw, split in splits.items() if split.startswith("test")},
        "raw_references": raw_refs, "pairs": counts, **noise_record,
    })


main = common.command(TAG, NAME, parse_args, build)


if __name__ == "__main__":
    raise SystemExit(main())
