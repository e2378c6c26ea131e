"""fairseq optimizer `ivon`: IVON (Shen et al., 2024, "Variational Learning is Effective for Large
Deep Networks") on top of the `ivon-opt` package.

IVON learns a diagonal Gaussian posterior N(m, σ²) over the weights, σ = 1/sqrt(ess·(h + δ)),
with h an online Hessian estimate and δ the weight decay (the prior precision). Each update
needs gradients taken at weight samples m + ε; the task `translation_ivon` draws them around
forward and backward through `sampled_params`, and this class turns them into IVON's update.

How the samples meet fairseq's trainer:
- The K samples (`--ivon-mc-samples`) of an update are seeded by (seed, update number, k): every
  micro-batch of `--update-freq` and every data-parallel worker uses the same K weight samples,
  so accumulation and data parallelism are exactly a larger batch, and a resumed run draws the
  samples an uninterrupted one would.
- The mean gradient over samples lives in `p.grad`, so fairseq's normalisation, all-reduce,
  clipping and `gnorm` apply to it unchanged. IVON's Hessian estimate also needs Σ_k ε_k ⊙ g_k:
  with K = 1 that is ε ⊙ p.grad at step time; with K > 1 it is accumulated beside the gradients
  and receives the same scalings (and an all-reduce) as they do.
- The parameters hold the mean outside `sampled_params`, bit for bit: validation, checkpoints
  and generation see the mean.
"""
import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import List, Optional

import torch
import torch.distributed as dist
from fairseq.distributed import utils as distributed_utils
from fairseq.optim import FairseqOptimizer, register_optimizer
from omegaconf import II

from labo_fairseq.errors import FlagError, report_flag_errors
from labo_fairseq.fairseq_utils import ReducedPrecisionFlags

logger = logging.getLogger(__name__)

# fairseq's reduced-precision modes and why each is refused (see `_check_flags`)
_PRECISION_FLAGS = (
    ("fp16", "--fp16"),
    ("memory_efficient_fp16", "--memory-efficient-fp16"),
    ("bf16", "--bf16"),
    ("memory_efficient_bf16", "--memory-efficient-bf16"),
    ("amp", "--amp"),
)


class IvonFlagError(FlagError):
    """An invalid IVON flag or flag combination; fairseq-train prints it as one line."""


report_flag_errors()


@dataclass
class IvonConfig(ReducedPrecisionFlags):
    ivon_ess: Optional[float] = field(
        default=None,
        metadata={"help": "effective sample size: the number of data points the posterior is conditioned on, "
                          "> 0; smaller values widen the posterior (more weight noise). Default: the number of "
                          "target tokens in the training set (sentences with --sentence-avg), which "
                          "--task translation_ivon counts"},
    )
    ivon_hess_init: float = field(
        default=1.0, metadata={"help": "initial Hessian estimate h0, > 0; sets the initial weight noise"},
    )
    ivon_beta1: float = field(default=0.9, metadata={"help": "gradient momentum, in [0, 1)"})
    ivon_beta2: float = field(
        default=0.99999, metadata={"help": "Hessian momentum, in [0, 1); close to 1 (see the IVON paper)"},
    )
    ivon_mc_samples: int = field(
        default=1,
        metadata={"help": "weight samples per update, >= 1; each costs a forward and backward pass of every batch"},
    )
    ivon_clip_radius: float = field(
        default=float("inf"), metadata={"help": "element-wise clipping of the preconditioned update, > 0"},
    )
    weight_decay: float = field(
        default=1e-4, metadata={"help": "weight decay, >= 0: IVON's prior precision (it also bounds the noise)"},
    )
    lr: List[float] = II("optimization.lr")
    seed: int = II("common.seed")


def refuse_reduced_precision(cfg, who: str = "--optimizer ivon") -> None:
    """fp16/bf16: fairseq steps an fp32 copy of the weights, so samples written there would never
    reach the model; amp: its GradScaler unscales gradients behind the optimizer's back, so the
    Hessian statistics would keep the loss scale. `cfg` has ReducedPrecisionFlags' fields."""
    for key, flag in _PRECISION_FLAGS:
        if getattr(cfg, key, False):
            raise IvonFlagError(f"{who} trains in fp32 only: drop {flag}")


def _check_flags(cfg) -> None:
    """Fails at start-up with one line naming the flag."""
    refuse_reduced_precision(cfg)
    ess = cfg.ivon_ess
    if ess is not None and not (0 < ess < math.inf):
        raise IvonFlagError(f"--ivon-ess must be > 0 (or left unset), got {ess}")
    if not cfg.ivon_hess_init > 0:
        raise IvonFlagError(f"--ivon-hess-init must be > 0, got {cfg.ivon_hess_init}")
    if not 0 <= cfg.ivon_beta1 < 1:
        raise IvonFlagError(f"--ivon-beta1 must be in [0, 1), got {cfg.ivon_beta1}")
    if not 0 <= cfg.ivon_beta2 < 1:
        raise IvonFlagError(f"--ivon-beta2 must be in [0, 1), got {cfg.ivon_beta2}")
    if cfg.ivon_mc_samples < 1:
        raise IvonFlagError(f"--ivon-mc-samples must be >= 1, got {cfg.ivon_mc_samples}")
    if not cfg.ivon_clip_radius > 0:
        raise IvonFlagError(f"--ivon-clip-radius must be > 0, got {cfg.ivon_clip_radius}")
    if not cfg.weight_decay >= 0:
        raise IvonFlagError(f"--weight-decay must be >= 0 with --optimizer ivon, got {cfg.weight_decay}")
    if any(not lr >= 0 for lr in cfg.lr):
        raise IvonFlagError(f"--lr must be >= 0, got {list(cfg.lr)}")


def _sample_seed(seed: int, update_num: int, k: int) -> int:
    # distinct per (seed, update, sample) and the same on every worker and after a resume
    return ((int(seed) * 1_000_003 + int(update_num)) * 1_009 + int(k)) % (2**63 - 1)


@register_optimizer("ivon", dataclass=IvonConfig)
class FairseqIVON(FairseqOptimizer):
    def __init__(self, cfg: IvonConfig, params):
        super().__init__(cfg)
        _check_flags(cfg)
        self.mc_samples = int(cfg.ivon_mc_samples)
        self.ess_given = cfg.ivon_ess is not None
        try:
            # imported here so that the plugin's other parts load without the optional package
            import ivon
        except ImportError:
            raise IvonFlagError("--optimizer ivon needs the ivon-opt package: pip install ivon-opt==0.1.3") from None
        # IVON's own `sync` all-reduces its sample averages in step(); here fairseq's data
        # parallelism reduces the gradients and `all_reduce_grads` the rest, so it stays off.
        self._optimizer = ivon.IVON(
            list(params), mc_samples=self.mc_samples, sync=False, **self.optimizer_config,
        )
        self._params = [p for group in self.param_groups for p in group["params"] if p is not None]
        self._update_num = None  # the update whose samples were drawn since the last zero_grad
        self._nxg = None  # Σ_k ε_k ⊙ g_k / K, accumulated when K > 1
        self._nxg_reduced = False
        self._sigma = None

    @property
    def optimizer_config(self):
        return {
            "lr": self.cfg.lr[0],
            # 1.0 stands in until the task sets the training-set size (set_ess)
            "ess": self.cfg.ivon_ess if self.ess_given else 1.0,
            "hess_init": self.cfg.ivon_hess_init,
            "beta1": self.cfg.ivon_beta1,
            "beta2": self.cfg.ivon_beta2,
            "weight_decay": self.cfg.weight_decay,
            "clip_radius": self.cfg.ivon_clip_radius,
        }

    @property
    def sampling_started(self) -> bool:
        """Whether this update's training samples have been drawn (by an earlier micro-batch)."""
        return self._update_num is not None

    # -- posterior ----------------------------------------------------------------------------

    def set_ess(self, ess: float) -> None:
        if not 0 < ess < math.inf:
            raise IvonFlagError(f"--ivon-ess: the training set gives an effective sample size of {ess}; pass --ivon-ess")
        for group in self.param_groups:
            group["ess"] = float(ess)
        self._sigma = None

    def _group_sigmas(self):
        return [(group["ess"] * (group["hess"] + group["weight_decay"])).rsqrt() for group in self.param_groups]

    def mean_sigma(self) -> float:
        """The posterior's standard deviation averaged over all weights (changes only at step)."""
        if self._sigma is None:
            sigmas = self._group_sigmas()
            total = sum(s.numel() for s in sigmas)
            self._sigma = float(sum(s.double().sum() for s in sigmas) / max(total, 1))
        return self._sigma

    def _noise(self, update_num: int, k: int) -> torch.Tensor:
        """ε_k of update `update_num`: the same tensor whenever it is asked for again."""
        device, dtype = self._optimizer._device, self._optimizer._dtype
        generator = torch.Generator(device=device)
        generator.manual_seed(_sample_seed(self.cfg.seed, update_num, k))
        return torch.cat([
            torch.randn(sigma.numel(), generator=generator, device=device, dtype=dtype) * sigma
            for sigma in self._group_sigmas()
        ])

    def _flat(self, tensors) -> torch.Tensor:
        return torch.cat([t.reshape(-1) for t in tensors]) if self._params else torch.zeros(0)

    def _flat_grads(self) -> torch.Tensor:
        return self._flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params)

    def _write_params(self, flat: torch.Tensor) -> None:
        # copy into the existing storage: tied weights and DDP's references stay valid
        offset = 0
        for p in self._params:
            p.data.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    @contextmanager
    def sampled_params(self, update_num: int, k: int, train: bool = True):
        """Inside the block the parameters are the k-th weight sample of update `update_num`;
        afterwards they are the mean again, bit for bit. With `train`, the gradients the block
        adds are that sample's contribution to the update."""
        if train:
            if self._update_num is None:
                self._update_num = update_num
            elif self._update_num != update_num:
                raise RuntimeError(f"IVON samples of update {update_num} drawn while update {self._update_num} is pending")
        with torch.no_grad():
            mean = self._flat(p.data for p in self._params)
            noise = self._noise(update_num, k)
            self._write_params(mean + noise)
            before = self._flat_grads() if train and self.mc_samples > 1 else None
        try:
            yield noise
        finally:
            with torch.no_grad():
                self._write_params(mean)
                if before is not None:
                    contribution = noise * (self._flat_grads() - before)
                    self._nxg = contribution if self._nxg is None else self._nxg.add_(contribution)

    # -- fairseq's trainer --------------------------------------------------------------------

    def zero_grad(self):
        super().zero_grad()
        self._update_num = None
        self._nxg = None
        self._nxg_reduced = False

    def all_reduce_grads(self, module):
        super().all_reduce_grads(module)
        if self._nxg is None or self._nxg_reduced:
            return
        self._nxg_reduced = True
        if not (dist.is_available() and dist.is_initialized()):
            return
        world_size = distributed_utils.get_data_parallel_world_size()
        if world_size <= 1:
            return
        # With K > 1 the task runs every backward under no_sync (each sample's contribution is
        # read from the local gradients), so PyTorch DDP has not reduced p.grad; a wrapper with
        # its own all_reduce_grads has, in super() above. Averaged like DDP does.
        group = distributed_utils.get_data_parallel_group()
        if not hasattr(module, "all_reduce_grads"):
            grads = self._flat_grads()
            flat = torch.cat([grads, self._nxg])
            distributed_utils.all_reduce(flat, group=group)
            flat.div_(world_size)
            self._write_grads(flat[:grads.numel()])
            self._nxg = flat[grads.numel():]
        else:
            distributed_utils.all_reduce(self._nxg, group=group)
            self._nxg.div_(world_size)

    def _write_grads(self, flat: torch.Tensor) -> None:
        offset = 0
        for p in self._params:
            chunk = flat[offset:offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = chunk.clone()
            else:
                p.grad.copy_(chunk)
            offset += p.numel()

    def multiply_grads(self, c):
        super().multiply_grads(c)
        if self._nxg is not None:
            self._nxg.mul_(c.to(self._nxg.device) if torch.is_tensor(c) else c)

    def clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
        grad_norm = super().clip_grad_norm(max_norm, aggregate_norm_fn)
        if self._nxg is not None and max_norm > 0:
            # the factor fairseq.utils.clip_grad_norm_ applied to the gradients
            coef = (max_norm / (grad_norm.to(self._nxg.device) + 1e-6)).clamp(max=1)
            self._nxg.mul_(coef)
        return grad_norm

    def step(self, closure=None, scale=1.0, groups=None):
        if closure is not None or groups is not None:
            raise ValueError("--optimizer ivon: step() takes neither a closure nor groups")
        if self._update_num is None:
            raise IvonFlagError(
                "--optimizer ivon needs its weight samples drawn around forward and backward: use --task translation_ivon"
            )
        if scale != 1.0:
            self.multiply_grads(1.0 / scale)
        grad = self._flat_grads()
        if self.mc_samples == 1:
            nxg = self._noise(self._update_num, 0) * grad
        else:
            nxg = self._nxg
        state = self._optimizer.state
        state["count"], state["avg_grad"], state["avg_nxg"] = 1, grad, nxg
        self._optimizer.step()  # IVON's momentum, Hessian and mean update; resets its sample averages
        self._update_num = None
        self._nxg = None
        self._nxg_reduced = False
        self._sigma = None

    # -- checkpoints --------------------------------------------------------------------------

    def state_dict(self):
        state_dict = self._optimizer.state_dict()
        # IVON keeps momentum and Hessian in its param groups (saved by torch) but the step count
        # behind momentum debiasing in an attribute: without it a resumed run would debias anew.
        state_dict["state"]["ivon_current_step"] = self._optimizer.current_step
        return state_dict

    def load_state_dict(self, state_dict, optimizer_overrides=None):
        state_dict = dict(state_dict)
        state_dict["state"] = dict(state_dict["state"])
        current_step = int(state_dict["state"].pop("ivon_current_step", 0))
        super().load_state_dict(state_dict, optimizer_overrides)
        self._optimizer.current_step = current_step
        device, dtype = self._optimizer._device, self._optimizer._dtype
        config = self.optimizer_config
        for group in self.param_groups:
            # checkpoints are loaded onto the CPU; IVON's buffers must sit with the weights
            group["momentum"] = group["momentum"].to(device=device, dtype=dtype)
            group["hess"] = group["hess"].to(device=device, dtype=dtype)
            # the state comes from the checkpoint, the hyperparameters from this run's flags
            # (lr from the scheduler, ess from --ivon-ess or the task)
            for key in ("hess_init", "beta1", "beta2", "weight_decay", "clip_radius"):
                group[key] = config[key]
            if self.ess_given:
                group["ess"] = config["ess"]
        self._sigma = None
