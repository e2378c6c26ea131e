"""The evaluation tools' error type, their paired-file reader and the one-line account of a
checkpoint that does not load."""
import re
from typing import List, Optional, Tuple

from labo_fairseq.cli.errors import UserError
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


def checkpoint_load_error(checkpoint, data_bin, text: str) -> Optional[str]:
    """One line for the two ways a checkpoint fails to load, read from the error's text (an
    exception's message, or fairseq-generate's log); None when `text` shows neither:

    - torch's weights-only loader refused the pickle (it refers to a function or class a
      checkpoint of tensors never needs, e.g. posix.system): nothing of it was run;
    - the weights do not fit the model built for the data-bin (another vocabulary: the
      embedding sizes differ; another architecture: parameters missing or unexpected)."""
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL (\S+) (?:whose module|was not)", text)
        if found:
            why = f"its pickle refers to {found.group(1)}, which a checkpoint of tensors never needs"
        else:   # the unpickler's own words, without torch's advice to load it unsafely
            lines = (line.replace("Weights only load failed.", "").strip() for line in text.splitlines())
            why = next((line for line in lines if line and "weights_only" not in line and
                        not line.startswith(("Check the documentation", "Please file an issue"))), "unknown")
        return f"checkpoint {checkpoint} is refused, nothing of it was run: {why[:300]}"
    if "Error(s) in loading state_dict" not in text:
        return None
    sizes = re.findall(r"size mismatch for (\S+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) from "
                       r"checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)", text)
    if sizes:
        name, saved, built = sizes[0]
        more = f" (and {len(sizes) - 1} more parameters)" if len(sizes) > 1 else ""
        if "embed_tokens" in name or "output_projection" in name:
            side = "source" if name.startswith("encoder.") else "target"
            return (f"checkpoint {checkpoint} was trained with another vocabulary than data-bin {data_bin}: "
                    f"embedding size {built.split(',')[0]} in the data-bin's {side} dictionary, "
                    f"{saved.split(',')[0]} in the checkpoint ({name}: [{saved}] in the checkpoint, "
                    f"[{built}] for the data-bin){more}")
        return (f"checkpoint {checkpoint} does not fit the model built for data-bin {data_bin}: {name} is "
                f"[{saved}] in the checkpoint, [{built}] in the model{more}")
    detail = re.search(r"((?:Missing|Unexpected) key\(s\) in state_dict: .*)", text)
    return (f"checkpoint {checkpoint} does not fit the model built for data-bin {data_bin}: "
            f"{detail.group(1)[:300] if detail else 'its parameters differ'}")
