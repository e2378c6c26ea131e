"""Joint subword models: subword-nmt BPE (as fairseq's recipes use it) or sentencepiece."""
import contextlib
import io
import sys
from pathlib import Path

from .common import PrepError, Timer, concatenate, log, warn, writing

SPM_SEED = 1


def learn_bpe(train_paths, codes_path, merges, scratch_dir):
    """learn_bpe.py -s merges on the concatenation of train_paths (min frequency 2, the default)."""
    from subword_nmt import learn_bpe as subword_nmt_module
    joint = concatenate(train_paths, Path(scratch_dir) / "bpe-train.joint")
    terminal = sys.stderr

    def merges_bar(iterable, *args, **kwargs):
        # subword-nmt's own tqdm would write into the silenced stderr below: show the merges on the
        # terminal instead (and nothing when stderr is not one)
        from tqdm import tqdm
        return tqdm(iterable, desc="BPE merges", unit="merges", file=terminal, disable=not terminal.isatty(),
                    leave=False, dynamic_ncols=True)

    own_tqdm = getattr(subword_nmt_module, "tqdm", None)
    subword_nmt_module.tqdm = merges_bar
    try:
        with open(joint, encoding="utf-8") as infile, writing(codes_path), \
                open(codes_path, "w", encoding="utf-8") as outfile:
            # subword-nmt prints "no pair has frequency >= 2. Stopping" to stderr when the corpus runs out
            # of pairs before `merges`; that is normal on small corpora.
            with contextlib.redirect_stderr(io.StringIO()):
                subword_nmt_module.learn_bpe(infile, outfile, merges)
    finally:
        subword_nmt_module.tqdm = own_tqdm
    joint.unlink()
    return sum(1 for line in open(codes_path, encoding="utf-8") if not line.startswith("#version"))


class _FileModelTransform:
    """A picklable block transform built on a model file, loaded on first use in each process (the
    workers of map_lines get the path, not the loaded model)."""

    def __init__(self, path):
        self.path = str(path)
        self._model = None

    def __getstate__(self):
        return {"path": self.path}

    def __setstate__(self, state):
        self.__init__(state["path"])

    def __call__(self, block):
        if self._model is None:
            self._model = self.load()
        return self.apply(self._model, block)


class BpeSegmenter(_FileModelTransform):
    """apply_bpe.py -c codes (separator '@@')."""

    def load(self):
        from subword_nmt.apply_bpe import BPE
        with open(self.path, encoding="utf-8") as codes:
            return BPE(codes)

    @staticmethod
    def apply(bpe, block):
        return [bpe.process_line(line) for line in block]


def _lines_of(paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n")


def train_spm(train_paths, model_path, vocab_size, model_type, workers, max_sentences=4_000_000, source=None):
    """A joint sentencepiece model over train_paths, written to model_path.

    fairseq adds its own <s>, </s>, <pad>, so the model keeps only <unk>. The vocabulary size is a soft
    limit so that tiny corpora do not fail; on real corpora it is reached exactly. Sentences are fed
    from Python rather than by file name because the model records its input paths (which would make
    the file differ between runs); sampling (only past max_sentences) uses a fixed seed. Errors
    name `source` (the user's files the training text came from) rather than train_paths.
    """
    import sentencepiece as spm
    spm.set_random_generator_seed(SPM_SEED)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines_of(train_paths), model_writer=model,
            vocab_size=vocab_size, model_type=model_type, character_coverage=1.0,
            num_threads=workers, input_sentence_size=max_sentences, shuffle_input_sentence=True,
            hard_vocab_limit=False, bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
            minloglevel=2)
    except (RuntimeError, OSError) as e:
        raise PrepError(f"sentencepiece training on {source or ', '.join(map(str, train_paths))} failed: "
                        f"{str(e).strip().splitlines()[-1]}") from None
    with writing(model_path):
        Path(model_path).write_bytes(model.getvalue())
    return Path(model_path)


def spm_pieces(model_path):
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(model_path)).get_piece_size()


def warn_shortfall(tag, requested, produced, unit, source):
    """One warning line when the train text gave fewer merges or pieces than --vocab asked for."""
    if produced < requested:
        warn(tag, f"--vocab {requested}: the train text of {source} allows only {produced} {unit} "
                  f"(prepare.json records both)")


def joint_subwords(args, train_paths, text_dir, scratch_dir, tag, source):
    """Learns args.subwords ("bpe": args.vocab merges into text_dir/code; "spm": an args.spm_type
    model of args.vocab pieces, text_dir/spm.model) on train_paths, the tokenised train text of
    `source`; returns (block transform, prepare.json entries). The entries record what was
    requested ("vocab") and what the text allowed ("vocab_produced"): both tools stop early on a
    small corpus, which is reported as a one-line warning."""
    timer = Timer()
    sides = " + ".join(Path(p).name for p in train_paths)
    if args.subwords == "bpe":
        produced = learn_bpe(train_paths, text_dir / "code", args.vocab, scratch_dir)
        segmenter, unit = BpeSegmenter(text_dir / "code"), "BPE merges"
        log(tag, f"learned {produced} BPE merges on {sides} ({timer})")
    else:
        model = train_spm(train_paths, text_dir / "spm.model", args.vocab, args.spm_type, args.workers,
                          source=source)
        produced = spm_pieces(model)
        segmenter, unit = SpmSegmenter(model), "sentencepiece pieces"
        log(tag, f"trained a {args.spm_type} sentencepiece model of {produced} pieces on {sides} ({timer})")
    warn_shortfall(tag, args.vocab, produced, unit, source)
    return segmenter, {"vocab": args.vocab, "vocab_produced": produced,
                       "spm_type": args.spm_type if args.subwords == "spm" else None}


class SpmSegmenter(_FileModelTransform):
    """Sentencepiece pieces joined by spaces (fairseq's --bpe sentencepiece input format; undone with
    --remove-bpe sentencepiece)."""

    def load(self):
        import sentencepiece as spm
        return spm.SentencePieceProcessor(model_file=self.path)

    @staticmethod
    def apply(sp, block):
        return [" ".join(pieces) for pieces in sp.encode(block, out_type=str)]
