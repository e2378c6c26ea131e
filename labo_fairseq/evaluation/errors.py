"""The evaluation tools' error type and their paired-file reader."""
from typing import List, Tuple

from labo_fairseq.errors import UserError
from labo_fairseq.textfiles import read_lines


class EvaluationError(UserError):
    """A problem with the user's inputs (missing/empty/mismatched files), reported in one line."""


def read_parallel(hyp_path, ref_path) -> Tuple[List[str], List[str]]:
    """Hypothesis and reference lines, which must be equally many and not zero."""
    hyps = read_lines(hyp_path, "hypothesis file", allow_empty=False)
    refs = read_lines(ref_path, "reference file", allow_empty=False)
    if len(hyps) != len(refs):
        raise EvaluationError(
            f"line counts differ: hypothesis file {hyp_path} has {len(hyps)} lines, "
            f"reference file {ref_path} has {len(refs)}")
    return hyps, refs
