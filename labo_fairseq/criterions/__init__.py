from labo_fairseq.criterions import label_smoothed_labo  # registers the criterion
from labo_fairseq.criterions import label_smoothed_ols  # noqa: E402,F401  (registers the criterion)

label_smoothed_labo.report_flag_errors()
