"""Evaluation of translation runs: BLEU/sacreBLEU/chrF scores, long-tail token-frequency
analysis and multi-run comparison reports.

Modules (each has a command-line entry point where one is useful):

- `score`: parses `fairseq-generate` output, restores sentence order and writes
  hyp/ref/src files plus `scores.json` (tokenized BLEU as fairseq prints it, sacreBLEU, chrF).
- `databin`: reads a data-bin directory (languages, `prepare.json`) and decides the decoding
  of subwords for `fairseq-generate`.
- `longtail`: word/token accuracy bucketed by training-set frequency (compare-mt's analysis).
- `report`: groups evaluated runs by method and seed and writes REPORT.md / REPORT.html.
- `leftovers`: removes the temporary files of an evaluation or report that was killed.
"""
