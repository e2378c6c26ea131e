"""Joint subword models: subword-nmt BPE (as fairseq's recipes use it) or sentencepiece."""
import contextlib
import io
import sys
from pathlib import Path

from .common import PrepError, concatenate

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
        with open(joint, encoding="utf-8") as infile, open(codes_path, "w", encoding="utf-8") as outfile:
            # subword-nmt prints "no pair has frequency >= 2. Stopping" to stderr when the corpus runs out
            # of pairs before `merges`; that is normal on small corpora.
            with contextlib.redirect_stderr(io.StringIO()):
                subword_nmt_module.learn_bpe(infile, outfile, merges)
    finally:
        subword_nmt_module.tqdm = own_tqdm
    joint.unlink()
    return sum(1 for line in open(codes_path, encoding="utf-8") if not line.startswith("#version"))


class BpeSegmenter:
    """Picklable block transform: apply_bpe.py -c codes (separator '@@')."""

    def __init__(self, codes_path):
        self.codes_path = str(codes_path)
        self._bpe = None

    def __getstate__(self):
        return {"codes_path": self.codes_path}

    def __setstate__(self, state):
        self.__init__(state["codes_path"])

    def __call__(self, block):
        if self._bpe is None:
            from subword_nmt.apply_bpe import BPE
            with open(self.codes_path, encoding="utf-8") as codes:
                self._bpe = BPE(codes)
        return [self._bpe.process_line(line) for line in block]


def _lines_of(paths):
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.rstrip("\n")


def train_spm(train_paths, model_path, vocab_size, model_type, workers, max_sentences=4_000_000):
    """A joint sentencepiece model over train_paths, written to model_path.

    fairseq adds its own <s>, </s>, <pad>, so the model keeps only <unk>. The vocabulary size is a soft
    limit so that tiny corpora do not fail; on real corpora it is reached exactly. Sentences are fed
    from Python rather than by file name because the model records its input paths (which would make
    the file differ between runs); sampling (only past max_sentences) uses a fixed seed.
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
        raise PrepError(f"sentencepiece training on {', '.join(map(str, train_paths))} failed: "
                        f"{str(e).strip().splitlines()[-1]}") from None
    Path(model_path).write_bytes(model.getvalue())
    return Path(model_path)


class SpmSegmenter:
    """Picklable block transform: sentencepiece pieces joined by spaces (fairseq's --bpe sentencepiece
    input format; undone with --remove-bpe sentencepiece)."""

    def __init__(self, model_path):
        self.model_path = str(model_path)
        self._sp = None

    def __getstate__(self):
        return {"model_path": self.model_path}

    def __setstate__(self, state):
        self.__init__(state["model_path"])

    def __call__(self, block):
        if self._sp is None:
            import sentencepiece as spm
            self._sp = spm.SentencePieceProcessor(model_file=self.model_path)
        return [" ".join(pieces) for pieces in self._sp.encode(block, out_type=str)]
