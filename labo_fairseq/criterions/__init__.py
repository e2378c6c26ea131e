from labo_fairseq.criterions import label_smoothed_labo  # noqa: F401  (registers the criterion)
