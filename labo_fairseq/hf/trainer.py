"""`LaboSeq2SeqTrainer`: `Seq2SeqTrainer` training with the LABO loss, fused with the output
projection by default."""
from typing import Optional

from transformers import Seq2SeqTrainer

from labo_fairseq.hf.fused import enable_fused_loss
from labo_fairseq.hf.loss import IGNORE_INDEX, LaboLoss


class LaboSeq2SeqTrainer(Seq2SeqTrainer):
    """`Seq2SeqTrainer(...)` plus:

    labo_alpha, labo_tau   LABO's alpha in [0, 1) and tau (> 0, inf = uniform smoothing)
    labo_fused             True: `enable_fused_loss` (no [tokens x vocab] logits in training;
                           Marian, BART, mBART, M2M100/NLLB, T5); False: `compute_loss_func`
    labo_impl              "auto" | "torch" | "triton" (labo_fairseq.functional)
    labo_tsla_stop         alpha = 0 once this many updates are done (None: never)
    labo_log_q_entropy     log the mean entropy of q (nats) as `q_entropy` with each training `loss`

    The loss is `self.labo_loss`; its callback (update count, q_entropy) runs before the other
    callbacks. `args.label_smoothing_factor` must be 0: for the same loss use
    labo_alpha = alpha_from_label_smoothing_factor(epsilon, V) and labo_tau = inf.
    """

    def __init__(self, *args, labo_alpha: float = 0.1, labo_tau: float = 1.25, labo_fused: bool = True,
                 labo_impl: str = "auto", labo_tsla_stop: Optional[int] = None, labo_log_q_entropy: bool = True,
                 labo_ignore_index: int = IGNORE_INDEX, **kwargs):
        if kwargs.get("compute_loss_func") is not None:
            raise ValueError("LaboSeq2SeqTrainer sets compute_loss_func itself; do not pass one")
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        if training_args is not None and training_args.label_smoothing_factor:
            raise ValueError(f"label_smoothing_factor={training_args.label_smoothing_factor} would be ignored "
                             "under LABO; set it to 0 (the LABO equivalent is labo_alpha = "
                             "alpha_from_label_smoothing_factor(epsilon, V), labo_tau = inf)")
        self.labo_loss = LaboLoss(labo_alpha, labo_tau, impl=labo_impl, ignore_index=labo_ignore_index,
                                  tsla_stop=labo_tsla_stop, log_q_entropy=labo_log_q_entropy)
        self.labo_fused = labo_fused
        if labo_fused:
            if kwargs.get("model_init") is not None:
                raise ValueError("labo_fused=True needs model=..., not model_init (or use labo_fused=False)")
            model = kwargs.get("model", args[0] if args else None)
            if model is None:
                raise ValueError("LaboSeq2SeqTrainer needs a model")
            enable_fused_loss(model, self.labo_loss)
        else:
            kwargs["compute_loss_func"] = self.labo_loss
        super().__init__(*args, **kwargs)
        # first, so the printer and reporters see the q_entropy it adds to the logs
        self.callback_handler.callbacks.insert(0, self.labo_loss.callback)
