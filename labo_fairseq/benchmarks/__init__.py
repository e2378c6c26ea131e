"""Benchmarks: `loss` (the loss op against fairseq's label smoothing and peer kernels) and `train`
(fairseq-train throughput and peak memory, LS vs LABO). Run as `labo-bench loss|train`."""
