"""The ranges of LABO's scalar hyper-parameters, one rule for the op, the fairseq criterion, the
Transformers loss and recipes. No torch import: reading a recipe stays cheap."""

# Below this, 1/tau overflows float32 long before q differs from a one-hot on the largest
# non-gold logit; such tau would only produce NaN.
TAU_MIN = 1e-4
