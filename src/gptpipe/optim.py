"""The optimizers: AdamW, and Muon for the blocks' matrices when
train.optimizer is muon (stepped together as one OptimizerChain)."""
from __future__ import annotations

import torch
import torch.nn as nn

from .devices import cpu_has_amx
from .params import TrainParams


def configure_optimizer(model: nn.Module, tp: TrainParams, device: torch.device):
    """AdamW; weight decay on 2-D weights (matmuls, embeddings) only.

    train.optimizer muon: the blocks' 2-D weights go to Muon (at train.muon_lr,
    following the same warmup and decay as train.lr); embeddings, the head and
    1-D params stay with AdamW."""
    muon = []
    if tp.optimizer == "muon":
        muon = [p for name, p in model.named_parameters()
                if p.requires_grad and p.dim() == 2 and name.startswith("blocks.")]
    in_muon = {id(p) for p in muon}
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in in_muon]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tp.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    adamw = torch.optim.AdamW(groups, lr=tp.lr, betas=(tp.beta1, tp.beta2),
                              fused=device.type in ("cuda", "cpu"))
    if not muon:
        return adamw
    return OptimizerChain([adamw, Muon(muon, lr=tp.lr, lr_ratio=tp.muon_lr / tp.lr,
                                       weight_decay=tp.weight_decay)])


def _newton_schulz(G: torch.Tensor, steps: int) -> torch.Tensor:
    """Approximately orthogonalise a stack of wide (rows <= cols) matrices: the
    quintic iteration of Muon, in bf16 where matmuls are fast in bf16."""
    a, b, c = 3.4445, -4.7750, 2.0315
    fast_bf16 = G.is_cuda or cpu_has_amx()
    X = G.bfloat16() if fast_bf16 else G.float()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b*A + c*A@A
        X = torch.baddbmm(X, B, X, beta=a)           # a*X + B@X
    return X


class Muon(torch.optim.Optimizer):
    """Muon (K. Jordan, 2024): Nesterov momentum whose update for each weight matrix
    is orthogonalised by a Newton-Schulz iteration, scaled by sqrt(max(1, rows/cols)).
    Matrices of one shape are orthogonalised together, as one batched chain of
    matmuls. The step is group["lr"] * group["lr_ratio"]: the trainer sets lr from
    the schedule. Weight decay is decoupled and uses the unscaled lr, so it shrinks
    weights as AdamW would."""

    def __init__(self, params, lr: float = 1e-3, lr_ratio: float = 20.0,
                 momentum: float = 0.95, weight_decay: float = 0.0, ns_steps: int = 5):
        super().__init__(params, dict(lr=lr, lr_ratio=lr_ratio, momentum=momentum,
                                      weight_decay=weight_decay, ns_steps=ns_steps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                update = p.grad.lerp(buf, group["momentum"])
                tall = update.size(0) > update.size(1)
                update = update.mT if tall else update
                by_shape.setdefault(tuple(update.shape), []).append((p, tall, update))
            step_lr = group["lr"] * group["lr_ratio"]
            for shape, items in by_shape.items():
                ortho = _newton_schulz(torch.stack([u for _, _, u in items]), group["ns_steps"])
                for (p, tall, _), o in zip(items, ortho):
                    if group["weight_decay"]:
                        p.mul_(1 - group["lr"] * group["weight_decay"])
                    scale = step_lr * max(1.0, p.size(0) / p.size(1)) ** 0.5
                    p.add_((o.mT if tall else o).to(p.dtype), alpha=-scale)


class OptimizerChain:
    """Several optimizers stepped as one: what the trainer and checkpoints need."""

    def __init__(self, optimizers: list):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"chain": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for opt, s in zip(self.optimizers, state["chain"], strict=True):
            opt.load_state_dict(s)
