"""run.json's τ and α: numbers (τ = ∞ as "inf") written by the pipeline, read back as numbers, and
older runs' strings read the same."""
import json
import math

from labo_fairseq.evaluation.runs import (INFINITY, Run, decode_hyperparameter, encode_hyperparameter,
                                          format_hyperparameter)
from labo_fairseq.experiment import expand_methods


def run_with(info):
    return Run(path=None, method=info.get("method", "labo"), label="x", seed=1, info=info, evals={})


def test_tau_and_alpha_are_numbers_in_run_json_and_infinity_is_the_string_inf():
    methods = expand_methods([{"kind": "labo", "tau": [1.25, "inf"], "label_smoothing": 0.1},
                              {"kind": "tsla", "tau": "inf", "stop_update": 3}], "recipe")
    records = [json.loads(json.dumps(m.params, allow_nan=False)) for m in methods]
    assert [(r["label_smoothing"], r["tau"]) for r in records] == [(0.1, 1.25), (0.1, INFINITY), (0.1, INFINITY)]
    assert [m.name for m in methods] == ["labo-a0.1-tau1.25", "labo-a0.1-tauinf", "tsla-a0.1-tauinf-stop3"]


def test_new_and_old_forms_read_the_same():
    for new, old in ((1.25, "1.25"), (INFINITY, "inf"), (0.1, "0.1"), (2.0, "2")):
        assert run_with({"tau": new}).hyperparameter_value("tau") == run_with({"tau": old}).hyperparameter_value("tau")
        assert run_with({"tau": new}).hyperparameter("tau") == run_with({"tau": old}).hyperparameter("tau") == old
    assert run_with({"tau": INFINITY}).hyperparameter_value("tau") == math.inf
    # absent from run.json: from the training command
    command = {"train_command": ["fairseq-train", "bin", "--labo-tau", "1.5", "--label-smoothing", "0.2"]}
    assert run_with(command).hyperparameter_value("tau") == 1.5
    assert run_with(command).hyperparameter("label_smoothing") == "0.2"
    assert run_with({}).hyperparameter("tau") is None and run_with({}).hyperparameter_value("tau") is None
    assert run_with({"tau": "tuned"}).hyperparameter("tau") == "tuned"   # shown as written, but no number
    assert run_with({"tau": "tuned"}).hyperparameter_value("tau") is None


def test_encoding_round_trips():
    for value in (0.0001, 0.5, 1.25, 10.0, math.inf):
        assert decode_hyperparameter(encode_hyperparameter(value)) == value
        assert decode_hyperparameter(format_hyperparameter(value)) == float(format_hyperparameter(value))
    assert decode_hyperparameter(True) is None and decode_hyperparameter(None) is None
