from labo_fairseq.criterions import label_smoothed_labo  # registers the criterion

label_smoothed_labo.report_flag_errors()
