#!/usr/bin/env python
"""Train a small Marian model on Multi30k with Hugging Face Transformers, label smoothing
(`label_smoothing_factor`) against LABO (`LaboSeq2SeqTrainer`), and score both with the
project's sacreBLEU scoring on the raw references.

    python examples/hf_marian_multi30k.py --out runs/hf-multi30k            # CPU-sized defaults
    python examples/hf_marian_multi30k.py --out runs/hf-gpu --bf16 --impl triton \\
        --batch-size 128 --max-steps 4000 --d-model 512 --layers 6 --ffn 2048 --heads 8   # a GPU

Data: --data-dir holds Multi30k's published files, SPLIT.LANG.gz or SPLIT.LANG (train, val and
the --test-set, e.g. test_2016_flickr.de.gz); default ../shared/data/multi30k beside the checkout.
A joint sentencepiece model (--vocab-size pieces) is trained on the training text into OUT/spm.

Writes, for each method M of --methods: OUT/M/run.json (method, label, alpha, tau, seed),
OUT/M/train_log.json (the Trainer's log history, q_entropy included), OUT/M/model/ (the trained
model), and OUT/M/eval/test/ with hyp.txt, ref.txt, src.txt, hyp.detok.txt, ref.detok.txt,
ref.raw.txt and scores.json, written as labo-evaluate writes them (scores.json last); then prints
a table of the scores and writes it to OUT/summary.json. --out must be new or empty.
The GPU is used when there is one (--cpu forces the CPU).
"""
import argparse
import gzip
import json
import math
import os
import sys
import time
from pathlib import Path

from labo_fairseq.arguments import positive_int
from labo_fairseq.errors import UserError, run_command
from labo_fairseq.evaluation.runs import encode_hyperparameter, format_hyperparameter
from labo_fairseq.labo_scalars import TAU_MIN

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "multi30k"
METHODS = ("ls", "labo")
PAD, UNK, EOS = 0, 1, 2  # sentencepiece ids; Marian starts decoding with the pad id


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="hf_marian_multi30k.py",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="output directory (new or empty)")
    p.add_argument("--data-dir", default=str(DEFAULT_DATA), help="Multi30k's raw files (SPLIT.LANG[.gz])")
    p.add_argument("--src", default="de", help="source language")
    p.add_argument("--tgt", default="en", help="target language")
    p.add_argument("--test-set", default="test_2016_flickr", help="split scored at the end")
    p.add_argument("--methods", default="ls,labo", help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--alpha", type=float, default=0.1,
                   help="LABO's alpha; LS uses label_smoothing_factor = alpha * V / (V-1), the same weight "
                        "off the gold token")
    p.add_argument("--tau", type=float, default=1.25, help="LABO's tau (inf: uniform smoothing)")
    p.add_argument("--tsla-stop", type=positive_int, default=None, help="LABO: alpha = 0 after this many updates")
    p.add_argument("--no-fused", action="store_true", help="LABO on full logits instead of the fused loss")
    p.add_argument("--impl", default="auto", choices=("auto", "torch", "triton"), help="LABO implementation")
    p.add_argument("--vocab-size", type=positive_int, default=8000, help="joint sentencepiece vocabulary")
    p.add_argument("--max-train", type=positive_int, default=None, help="use the first N training pairs")
    p.add_argument("--max-test", type=positive_int, default=None, help="score the first N test sentences")
    p.add_argument("--max-len", type=positive_int, default=64, help="pieces per sentence (longer: truncated)")
    p.add_argument("--d-model", type=positive_int, default=256)
    p.add_argument("--layers", type=positive_int, default=2, help="encoder and decoder layers")
    p.add_argument("--heads", type=positive_int, default=4)
    p.add_argument("--ffn", type=positive_int, default=1024)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--batch-size", type=positive_int, default=64, help="sentence pairs per update")
    p.add_argument("--max-steps", type=positive_int, default=1500, help="optimizer updates per method")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-steps", type=int, default=200)
    p.add_argument("--beam", type=positive_int, default=4)
    p.add_argument("--eval-batch-size", type=positive_int, default=64)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is there")
    p.add_argument("--log-steps", type=positive_int, default=25)
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad or not args.methods:
        p.error(f"--methods: unknown method {bad[0] if bad else '(none)'!r} (choose from {', '.join(METHODS)})")
    if not 0.0 <= args.alpha < 1.0:
        p.error(f"--alpha must be in [0, 1), got {args.alpha}")
    if not args.tau >= TAU_MIN:  # NaN fails this too
        p.error(f"--tau must be >= {TAU_MIN:g} (or inf), got {args.tau}")
    return args


def read_split(data_dir: Path, split: str, lang: str):
    for path in (data_dir / f"{split}.{lang}.gz", data_dir / f"{split}.{lang}"):
        if path.is_file():
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", encoding="utf-8") as f:
                return [line.rstrip("\n") for line in f], path
    raise UserError(f"--data-dir {data_dir}: no {split}.{lang}.gz or {split}.{lang}")


def read_pairs(args, split, limit=None):
    data_dir = Path(args.data_dir)
    src, src_path = read_split(data_dir, split, args.src)
    tgt, tgt_path = read_split(data_dir, split, args.tgt)
    if len(src) != len(tgt):
        raise UserError(f"{src_path} has {len(src)} lines but {tgt_path} has {len(tgt)}")
    return src[:limit], tgt[:limit], tgt_path


def train_sentencepiece(lines, vocab_size, out_dir: Path):
    """A joint unigram model; written under a temporary name and renamed."""
    import sentencepiece as spm

    out_dir.mkdir(parents=True, exist_ok=True)
    text = out_dir / "train.txt"
    text.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    prefix = out_dir / "spm.partial"
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(prefix), vocab_size=vocab_size,
                                   hard_vocab_limit=False, character_coverage=1.0, pad_id=PAD, unk_id=UNK,
                                   eos_id=EOS, bos_id=-1, minloglevel=2)
    for ext in ("model", "vocab"):
        os.replace(f"{prefix}.{ext}", out_dir / f"spm.{ext}")
    text.unlink()
    return spm.SentencePieceProcessor(model_file=str(out_dir / "spm.model"))


def encode(sp, lines, max_len):
    return [ids[:max_len - 1] + [EOS] for ids in sp.encode(lines)]


def build_model(args, vocab_size):
    from transformers import MarianConfig, MarianMTModel

    config = MarianConfig(vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=args.d_model,
                          encoder_layers=args.layers, decoder_layers=args.layers,
                          encoder_attention_heads=args.heads, decoder_attention_heads=args.heads,
                          encoder_ffn_dim=args.ffn, decoder_ffn_dim=args.ffn, dropout=args.dropout,
                          max_position_embeddings=max(args.max_len, 64) + 2, pad_token_id=PAD, eos_token_id=EOS,
                          decoder_start_token_id=PAD, forced_eos_token_id=EOS, scale_embedding=True,
                          share_encoder_decoder_embeddings=True)
    return MarianMTModel(config)


def train(args, method, model, dataset, out_dir: Path):
    from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments

    from labo_fairseq.hf import LaboSeq2SeqTrainer, seq2seq_collator

    vocab = model.config.vocab_size
    training_args = Seq2SeqTrainingArguments(
        output_dir=str(out_dir / "checkpoints"), max_steps=args.max_steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, warmup_steps=args.warmup_steps, lr_scheduler_type="inverse_sqrt",
        adam_beta2=0.98, weight_decay=1e-4, logging_steps=args.log_steps, save_strategy="no", report_to=[],
        seed=args.seed, bf16=args.bf16, use_cpu=args.cpu, dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=True,
        # the same weight off the gold token as LABO's alpha: epsilon (V-1)/V = alpha
        label_smoothing_factor=args.alpha * vocab / (vocab - 1) if method == "ls" else 0.0)
    common = dict(model=model, args=training_args, train_dataset=dataset, data_collator=seq2seq_collator(model, PAD))
    if method == "ls":
        trainer = Seq2SeqTrainer(**common)
    else:
        trainer = LaboSeq2SeqTrainer(**common, labo_alpha=args.alpha, labo_tau=args.tau,
                                     labo_fused=not args.no_fused, labo_impl=args.impl, labo_tsla_stop=args.tsla_stop)
    trainer.train()
    return trainer


def translate(model, sp, sources, args):
    import torch

    model.eval()
    hypotheses = []
    device = next(model.parameters()).device
    for start in range(0, len(sources), args.eval_batch_size):
        batch = encode(sp, sources[start:start + args.eval_batch_size], args.max_len)
        width = max(len(ids) for ids in batch)
        input_ids = torch.tensor([ids + [PAD] * (width - len(ids)) for ids in batch], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=input_ids, attention_mask=input_ids.ne(PAD).long(), num_beams=args.beam,
                                 max_new_tokens=args.max_len, early_stopping=True)
        for row in out.tolist():
            hypotheses.append(sp.decode([t for t in row if t not in (PAD, EOS)]))
    return hypotheses


def score_translations(hypotheses, references, sources, args, ref_path, out_dir: Path):
    """The project's scoring (labo_fairseq.evaluation.score): sacreBLEU, chrF and TER against the
    raw references, tokenized BLEU on whitespace tokens; files and scores.json as labo-evaluate
    writes them."""
    from labo_fairseq.evaluation import score

    files = {"hyp.txt": hypotheses, "ref.txt": references, "src.txt": sources}
    scores = score.score_texts(hypotheses, references, args.tgt, raw_references=references, raw_path=str(ref_path),
                               files=files)
    score.write_outputs(out_dir, files, scores)
    return scores


def run(args):
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} exists and is not an empty directory")
    if not Path(args.data_dir).is_dir():
        raise UserError(f"--data-dir {args.data_dir} is not a directory (Multi30k's raw files go there)")
    train_src, train_tgt, _ = read_pairs(args, "train", args.max_train)
    test_src, test_tgt, test_path = read_pairs(args, args.test_set, args.max_test)
    import torch  # after the checks: bad input is refused at once, not after seconds of imports

    out.mkdir(parents=True, exist_ok=True)
    sp = train_sentencepiece(train_src + train_tgt, args.vocab_size, out / "spm")
    dataset = [{"input_ids": s, "labels": t} for s, t in zip(encode(sp, train_src, args.max_len),
                                                             encode(sp, train_tgt, args.max_len))]
    summary = {}
    for method in args.methods:
        method_dir = out / method
        torch.manual_seed(args.seed)
        model = build_model(args, sp.get_piece_size())
        started = time.time()
        trainer = train(args, method, model, dataset, method_dir)
        seconds = time.time() - started
        trainer.save_model(str(method_dir / "model"))
        (method_dir / "train_log.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        hypotheses = translate(model, sp, test_src, args)
        scores = score_translations(hypotheses, test_tgt, test_src, args, test_path, method_dir / "eval" / "test")
        tau = math.inf if method == "ls" else args.tau
        info = {"method": method, "label": "LS" if method == "ls" else f"LABO τ={format_hyperparameter(tau)}",
                "seed": args.seed, "label_smoothing": args.alpha, "tau": encode_hyperparameter(tau),
                "framework": "transformers",
                "fused": method == "labo" and not args.no_fused, "train_seconds": round(seconds, 1),
                "stop_update": args.tsla_stop if method == "labo" else None}
        (method_dir / "run.json").write_text(json.dumps(info, indent=1, ensure_ascii=False))
        summary[method] = {"label": info["label"], "sacrebleu": scores["sacrebleu"]["score"],
                           "chrf": scores["chrf"]["score"], "ter": scores["ter"]["score"],
                           "bleu_tok": scores["bleu"]["score"], "train_seconds": info["train_seconds"]}
    from tabulate import tabulate

    print(tabulate([[v["label"], v["sacrebleu"], v["chrf"], v["ter"], v["bleu_tok"], v["train_seconds"]]
                    for v in summary.values()],
                   headers=["method", "sacreBLEU", "chrF", "TER", "BLEU (tok.)", "train s"], floatfmt=".2f"))
    partial = out / "summary.json.partial"
    partial.write_text(json.dumps(summary, indent=1, ensure_ascii=False))
    os.replace(partial, out / "summary.json")
    return 0


def main(argv=None):
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is built locally
    return run_command("hf_marian_multi30k.py", lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
