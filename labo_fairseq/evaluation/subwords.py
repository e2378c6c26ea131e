"""Undoing subword segmentation, exactly as `fairseq-generate --post-process` does it.

fairseq names the two decodings `subword_nmt` (BPE with `@@ ` continuation markers, what plain
`--remove-bpe` means) and `sentencepiece` (pieces joined, U+2581 turned back into spaces); data
preparation records the segmentation in `prepare.json` as `"subwords": "bpe"` or `"spm"`.
"""
from typing import Optional

POST_PROCESS_MODES = ("subword_nmt", "sentencepiece", "none")

# prepare.json's names -> fairseq's --post-process names
POST_PROCESS_FOR_SUBWORDS = {"bpe": "subword_nmt", "spm": "sentencepiece", "none": "none"}

SENTENCEPIECE_SPACE = "\u2581"


def post_process_for(subwords: Optional[str]) -> str:
    """fairseq's --post-process mode for prepare.json's `subwords` value (None: `subword_nmt`,
    which leaves text without `@@ ` markers unchanged)."""
    if subwords is None:
        return "subword_nmt"
    try:
        return POST_PROCESS_FOR_SUBWORDS[subwords]
    except KeyError:
        raise ValueError(f"unknown subwords {subwords!r}; expected one of {sorted(POST_PROCESS_FOR_SUBWORDS)}")


def remove_subwords(line: str, mode: str) -> str:
    """Joins subword units back into words (same result as fairseq.data.data_utils.post_process).

    For `sentencepiece`, a line without any U+2581 is taken to be decoded already and returned
    unchanged: decoding again would delete its spaces, and evaluation output (hyp.txt) is decoded
    while the training text it is compared with is not.
    """
    if mode == "subword_nmt":
        return (line + " ").replace("@@ ", "").rstrip()
    if mode == "sentencepiece":
        if SENTENCEPIECE_SPACE not in line:
            return line
        return line.replace(" ", "").replace(SENTENCEPIECE_SPACE, " ").strip()
    if mode == "none":
        return line
    raise ValueError(f"unknown post-process mode {mode!r}; expected one of {POST_PROCESS_MODES}")
