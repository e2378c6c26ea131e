"""labo_fairseq.evaluation.databin and subwords: languages, split checks and subword decoding."""
import json

import pytest
from fairseq.data.data_utils import post_process

from labo_fairseq.evaluation.databin import inspect_data_bin
from labo_fairseq.evaluation.errors import EvaluationError
from labo_fairseq.evaluation.subwords import remove_subwords


def make_data_bin(path, pairs=(("de", "en"),), subsets=("test",), prepare=None):
    path.mkdir(parents=True, exist_ok=True)
    for src, tgt in pairs:
        for subset in subsets:
            for lang in (src, tgt):
                for ext in ("bin", "idx"):
                    (path / f"{subset}.{src}-{tgt}.{lang}.{ext}").write_bytes(b"")
    if prepare is not None:
        (path / "prepare.json").write_text(json.dumps(prepare))
    return path


def test_languages_from_file_names_and_default_decoding(toy_data_bin):
    info = inspect_data_bin(toy_data_bin, "test")
    assert (info.source_lang, info.target_lang, info.post_process, info.subwords) == ("src", "tgt", "subword_nmt", None)


@pytest.mark.parametrize("subwords, mode", [("bpe", "subword_nmt"), ("spm", "sentencepiece")])
def test_prepare_json_chooses_decoding_and_flags_override(tmp_path, subwords, mode):
    data_bin = make_data_bin(tmp_path, prepare={"subwords": subwords, "source_lang": "de", "target_lang": "en"})
    assert inspect_data_bin(data_bin).post_process == mode
    assert inspect_data_bin(data_bin, post_process="none").post_process == "none"


def test_several_pairs_need_languages(tmp_path):
    data_bin = make_data_bin(tmp_path, pairs=(("de", "en"), ("en", "de")))
    with pytest.raises(EvaluationError, match="several language pairs"):
        inspect_data_bin(data_bin)
    info = inspect_data_bin(data_bin, target_lang="de")
    assert (info.source_lang, info.target_lang) == ("en", "de")


def test_missing_split_or_directory(tmp_path):
    data_bin = make_data_bin(tmp_path / "bin", subsets=("valid",))
    with pytest.raises(EvaluationError, match=r"no binarised 'test' split .* found pairs: none"):
        inspect_data_bin(data_bin, "test")
    with pytest.raises(EvaluationError, match="does not exist"):
        inspect_data_bin(tmp_path / "absent")


@pytest.mark.parametrize("line", ["lo@@ w@@ er is lo@@ w", "new", "", "a@@ b c@@"])
def test_remove_subwords_bpe_matches_fairseq(line):
    assert remove_subwords(line, "subword_nmt") == post_process(line, "subword_nmt")


@pytest.mark.parametrize("line", ["\u2581lo w er \u2581is \u2581low", "\u2581a", "\u2581x \u2581y z"])
def test_remove_subwords_sentencepiece_matches_fairseq(line):
    assert remove_subwords(line, "sentencepiece") == post_process(line, "sentencepiece")


def test_sentencepiece_leaves_decoded_text_alone():
    assert remove_subwords("already decoded text", "sentencepiece") == "already decoded text"
