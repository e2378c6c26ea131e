"""Benchmark data preparation (IWSLT'14 DE-EN, WMT'14 EN-DE, Multi30k DE-EN) without Moses/Perl checkouts.

Each dataset module is a command-line tool (`python -m labo_fairseq.data_prep.<module> --help`) that the
shell wrappers in data-prep/ call.
"""
