"""Upstream's optimizer and learning-rate schedule, built from a config's ``training`` section.

* Adam (or another torch optimizer) with two parameter groups: sprites / masks / backgrounds with the
  ``optimizer.cluster`` options (no weight decay) and the networks with ``optimizer.transformer``
  (weight decay 1e-6 in the configs);
* a scheduler stepped once per epoch (or per batch with ``update_range: batch``); ``multi_step`` takes
  one ``gamma`` per group (``[1, 0.1]`` decays only the networks), milestones in epochs or, when
  floats, as fractions of the run;
* the learning rates scaled with the batch size when asked (``training.lr_scaling``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import torch

from .config import ConfigError

__all__ = ["lr_scale_factor", "build_optimizer", "build_scheduler", "run_length", "OPTIMIZERS", "SCHEDULERS",
           "FUSED_OPTIMIZERS"]

SCHEDULERS = ("constant_lr", "multi_step", "cosine_annealing", "exp_lr")
OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
              "rmsprop": torch.optim.RMSprop, "adamax": torch.optim.Adamax, "adagrad": torch.optim.Adagrad}
FUSED_OPTIMIZERS = ("adam", "adamw")  # torch has a fused CPU and CUDA update for these


def lr_scale_factor(batch_size: int, reference: Optional[int], rule: str) -> float:
    """Factor applied to every learning rate when training with ``batch_size`` instead of ``reference``.

    ``linear`` (Goyal et al.) scales with the batch, ``sqrt`` with its square root, ``none`` keeps it.
    """
    if rule not in ("none", "linear", "sqrt"):
        raise ConfigError(f"training.lr_scaling must be 'none', 'linear' or 'sqrt', got {rule!r}")
    if rule == "none" or reference is None:
        return 1.0
    if reference < 1:
        raise ConfigError(f"training.lr_reference_batch_size must be >= 1, got {reference}")
    ratio = batch_size / reference
    return ratio if rule == "linear" else math.sqrt(ratio)


def build_optimizer(model: torch.nn.Module, opt_cfg: Mapping[str, Any], lr_factor: float = 1.0
                    ) -> torch.optim.Optimizer:
    """The optimizer over two groups, in upstream's order: cluster parameters, then networks.

    Adam and AdamW use torch's fused update (one kernel over every parameter; 7x faster than the
    per-tensor loop for ResNet-18 on the CPU) unless ``fused: false``: the same Adam update, rounded differently
    in the last bits.

    ``opt_cfg`` is the ``training.optimizer`` section; its ``cluster`` / ``transformer`` dicts override
    the top-level options per group (upstream puts the networks' weight decay in ``transformer``).
    """
    opt_cfg = dict(opt_cfg)
    name = opt_cfg.pop("name", "adam")
    if name not in OPTIMIZERS:
        raise ConfigError(f"training.optimizer.name must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    cluster_kw = dict(opt_cfg.pop("cluster", None) or {})
    network_kw = dict(opt_cfg.pop("transformer", None) or {})
    if "betas" in opt_cfg and name not in ("adam", "adamw", "adamax"):
        opt_cfg.pop("betas")
    if "betas" in opt_cfg:
        opt_cfg["betas"] = tuple(opt_cfg["betas"])
    fused = opt_cfg.pop("fused", None)
    if fused and name not in FUSED_OPTIMIZERS:
        raise ConfigError(f"training.optimizer.fused: {name!r} has no fused implementation; "
                          f"fused is available for {sorted(FUSED_OPTIMIZERS)}")
    defaults = {k: v for k, v in opt_cfg.items() if v is not None}
    groups = []
    for params, kw in ((model.cluster_parameters(), cluster_kw), (model.network_parameters(), network_kw)):
        group = {**defaults, **kw, "params": list(params)}
        group["lr"] = float(group.get("lr", 1e-3)) * lr_factor
        groups.append(group)
    if fused is None:  # auto: the fused update wherever torch has one for these parameters
        fused = name in FUSED_OPTIMIZERS and all(
            p.device.type in ("cpu", "cuda") and p.is_floating_point() for g in groups for p in g["params"])
    extra = {"fused": True} if fused else {}
    try:
        return OPTIMIZERS[name](groups, **extra)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"training.optimizer: {err}") from err


class _Schedule:
    """A learning-rate factor as a function of the step count (epochs or iterations).

    A plain object rather than a lambda so that ``LambdaLR.state_dict`` stores its settings.
    """

    def __init__(self, kind: str, gamma: float, milestones: Sequence[int], total: int):
        self.kind, self.gamma, self.milestones, self.total = kind, float(gamma), sorted(milestones), max(total, 1)

    def __call__(self, step: int) -> float:
        if self.kind == "multi_step":
            return self.gamma ** sum(1 for m in self.milestones if step >= m)
        if self.kind == "cosine_annealing":
            return 0.5 * (1 + math.cos(math.pi * min(step, self.total) / self.total))
        if self.kind == "exp_lr":
            return self.gamma ** step
        return 1.0


def build_scheduler(optimizer: torch.optim.Optimizer, sched_cfg: Optional[Mapping[str, Any]], n_epochs: int,
                    n_iterations: int) -> tuple[torch.optim.lr_scheduler.LambdaLR, str]:
    """The LR scheduler and its update range (``"epoch"`` or ``"batch"``).

    ``multi_step``: factor ``gamma_g ** (number of milestones passed)`` per group ``g`` (``gamma`` a number
    or one per group; above 1 it raises the group's rate); float milestones are fractions of the run.
    ``cosine_annealing``: half cosine to 0 over the run. ``exp_lr``: ``gamma ** step``. ``constant_lr`` /
    null: constant.
    """
    sched_cfg = dict(sched_cfg or {})
    name = sched_cfg.get("name") or "constant_lr"
    if name not in SCHEDULERS:
        raise ConfigError(f"training.scheduler.name must be one of {SCHEDULERS} or null, got {name!r}")
    update_range = sched_cfg.get("update_range", "epoch")
    if update_range not in ("epoch", "batch"):
        raise ConfigError(f"training.scheduler.update_range must be 'epoch' or 'batch', got {update_range!r}")
    total = n_epochs if update_range == "epoch" else n_iterations
    milestones = [round(m * total) if isinstance(m, float) else int(m) for m in sched_cfg.get("milestones", [])]
    gamma = sched_cfg.get("gamma", 0.1)
    n_groups = len(optimizer.param_groups)
    gammas = list(gamma) if isinstance(gamma, list) else [gamma] * n_groups
    if len(gammas) != n_groups:
        raise ConfigError(f"training.scheduler.gamma has {len(gammas)} values but the optimizer has {n_groups} "
                          "parameter groups (cluster, network)")
    lambdas = [_Schedule(name, g, milestones, total) for g in gammas]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas), update_range


def run_length(tcfg: Mapping[str, Any], n_batches: int) -> tuple[int, int]:
    """``(epochs, iterations)`` of the run; ``n_iterations`` wins when both are set, so that
    ``--set training.n_iterations=N`` shortens any config."""
    if tcfg["n_iterations"] is not None:
        total = int(tcfg["n_iterations"])
        epochs = math.ceil(total / n_batches)
    elif tcfg["n_epoches"] is not None:
        epochs = int(tcfg["n_epoches"])
        total = epochs * n_batches
    else:
        raise ConfigError("training.n_epoches or training.n_iterations is required")
    if total < 1:
        raise ConfigError(f"the run must have at least one iteration, got {total}")
    return epochs, total
