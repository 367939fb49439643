"""The optimizers: AdamW, and Muon for the blocks' matrices when
train.optimizer is muon (stepped together as one OptimizerChain).

Neither is a torch.optim.Optimizer: its constructor and its step import
torch._dynamo, 1.0-1.1 s of every train stage's start-up on a 2-core CPU, for a
loop that is never compiled. AdamW's arithmetic is torch's own (its functional
`adamw`, fused on CPU and CUDA), and both keep torch's state_dict layout, so a
checkpoint holds the same tensors under the same keys as with torch.optim.AdamW."""
from __future__ import annotations

from collections import defaultdict

import torch
import torch.nn as nn
from torch.optim.adamw import adamw

from .params import TrainParams


def configure_optimizer(model: nn.Module, tp: TrainParams, device: torch.device,
                        amp_dtype: torch.dtype | None = None):
    """AdamW; weight decay on 2-D weights (matmuls, embeddings) only.

    train.optimizer muon: the blocks' 2-D weights go to Muon (at train.muon_lr);
    embeddings, the head and 1-D params stay with AdamW (at train.lr). Each param
    group keeps its peak lr as `initial_lr`; the trainer sets `lr` to it times the
    schedule's multiplier every step, so both follow the same warmup and decay."""
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
    optimizer = AdamW(groups, lr=tp.lr, betas=(tp.beta1, tp.beta2),
                      fused=device.type in ("cuda", "cpu"))
    if muon:
        # Newton-Schulz in bf16 when training is (amp_dtype, the trainer's autocast): fast
        # there, and the orthogonalised update needs no more precision than bf16 gives.
        ns_bf16 = amp_dtype == torch.bfloat16
        # Decay per unit of Muon's lr, so these weights shrink by train.lr's
        # lr * weight_decay a step, as AdamW's do (not muon_lr's: 20x more by default).
        decay = tp.weight_decay * tp.lr / tp.muon_lr
        optimizer = OptimizerChain([optimizer, Muon(
            muon, lr=tp.muon_lr, momentum=tp.muon_momentum, weight_decay=decay,
            ns_steps=tp.muon_ns_steps, ns_coefficients=tp.muon_ns_coefficients,
            ns_bf16=ns_bf16)])
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]  # the peak lr, which the schedule scales
    return optimizer


class Optimizer:
    """What the trainer and checkpoints use of torch.optim.Optimizer: param_groups
    (each a dict of its params and settings), per-param `state`, zero_grad, and
    state_dict / load_state_dict in torch's layout (params by their index)."""

    def __init__(self, params, defaults: dict):
        groups = list(params)
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = defaults
        self.param_groups = [{**defaults, **group, "params": list(group["params"])}
                             for group in groups]
        self.state: defaultdict = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    p.grad = None
                elif p.grad is not None:
                    p.grad.zero_()

    def _groups_to_step(self):
        """Each group with those of its params that have a gradient (none: skipped)."""
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                yield group, params

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def state_dict(self) -> dict:
        index = {id(p): i for i, p in enumerate(self._params())}
        groups, start = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(start, start + n))})
            start += n
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items() if s},
                "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict["param_groups"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("loaded state dict's parameter groups do not match the "
                             "optimizer's")
        for group, old in zip(self.param_groups, saved):
            group.update({k: v for k, v in old.items() if k != "params"})
        params = self._params()
        self.state = defaultdict(dict)
        for i, s in state_dict["state"].items():
            p = params[int(i)]
            # as torch does: moments follow the param's device and dtype; "step" its device
            self.state[p] = {k: v.to(p.device) if k == "step" else
                             v.to(p.device, p.dtype if v.is_floating_point() else v.dtype)
                             for k, v in s.items()}


class AdamW(Optimizer):
    """torch.optim.AdamW's update (decoupled weight decay, no amsgrad), by torch's
    functional adamw: the same numbers as torch.optim.AdamW with the same `fused`."""

    def __init__(self, params, lr: float, betas: tuple[float, float], eps: float = 1e-8,
                 weight_decay: float = 0.01, fused: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                                      fused=fused))

    @torch.no_grad()
    def step(self) -> None:
        for group, params in self._groups_to_step():
            fused = group["fused"]
            for p in params:
                state = self.state[p]
                if not state:  # as torch's: the step count on the param's device when fused
                    state["step"] = torch.zeros((), dtype=torch.float32,
                                                device=p.device if fused else "cpu")
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p,
                                                           memory_format=torch.preserve_format)
            states = [self.state[p] for p in params]
            beta1, beta2 = group["betas"]
            adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states],
                  [s["exp_avg_sq"] for s in states], [], [s["step"] for s in states],
                  fused=fused, amsgrad=False, beta1=beta1, beta2=beta2,
                  lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"],
                  maximize=False)


NS_STEPS = 5  # Newton-Schulz iterations per Muon step, as in Muon's reference

# Each iteration maps X to a*X + (b*A + c*A@A)@X with A = X@X^T: every singular
# value s of X becomes p(s) = a*s + b*s^3 + c*s^5, each p chosen to bring the
# composition close to 1 on (0, 1].
QUINTIC = (3.4445, -4.7750, 2.0315)  # Muon's: the same p every iteration
# Polar Express (Amsel et al., 2025), modded-nanogpt's schedule of five: a p per
# iteration, each the best for where the previous ones left the singular values.
# Fewer iterations take its first ones; past the fifth, the last repeats (which
# keeps narrowing the band around 1). X is divided by 1.02 times its norm, as
# modded-nanogpt does: the first polynomial is tuned for singular values up to 1
# and grows fast past it, and the margin keeps rounding from pushing one there.
POLAR_EXPRESS = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def _newton_schulz(G: torch.Tensor, kind: str, steps: int, bf16: bool) -> torch.Tensor:
    """Approximately orthogonalise a stack of wide (rows <= cols) matrices with
    `steps` iterations of `kind` (train.muon_ns_coefficients), in bf16 when `bf16`
    (where bf16 matmuls are fast)."""
    if kind == "polar_express":
        coefficients = [POLAR_EXPRESS[min(i, len(POLAR_EXPRESS) - 1)] for i in range(steps)]
        norm_scale = 1.02
    elif kind == "quintic":
        coefficients, norm_scale = [QUINTIC] * steps, 1.0
    else:
        raise ValueError(f"unknown Newton-Schulz coefficients {kind!r}")
    X = G.bfloat16() if bf16 else G.float()
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * norm_scale + 1e-7)
    for a, b, c in coefficients:
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b*A + c*A@A
        X = torch.baddbmm(X, B, X, beta=a)           # a*X + B@X
    return X


class Muon(Optimizer):
    """Muon (K. Jordan, 2024): Nesterov momentum whose update for each weight matrix
    is orthogonalised by a Newton-Schulz iteration, scaled by sqrt(max(1, rows/cols)).
    Matrices of one shape are orthogonalised together, as one batched chain of
    matmuls. The step is group["lr"]. Weight decay is decoupled, as AdamW's: each
    step multiplies the weights by 1 - lr * weight_decay."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95,
                 weight_decay: float = 0.0, ns_steps: int = NS_STEPS,
                 ns_coefficients: str = "quintic", ns_bf16: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      ns_steps=ns_steps, ns_coefficients=ns_coefficients))
        self.ns_bf16 = ns_bf16

    @torch.no_grad()
    def step(self) -> None:
        for group, params in self._groups_to_step():
            grads = [p.grad for p in params]
            bufs = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                bufs.append(state["momentum_buffer"])
            # one kernel per op over all the matrices, not one per matrix
            torch._foreach_lerp_(bufs, grads, 1 - group["momentum"])
            updates = torch._foreach_lerp(grads, bufs, group["momentum"])  # Nesterov
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            for indices in _same_shape(params):
                # (k, rows, cols) with rows <= cols: tall matrices go in transposed
                stack = torch.stack([updates[i].mT if _tall(params[i]) else updates[i]
                                     for i in indices])
                ortho = _newton_schulz(stack, group["ns_coefficients"], group["ns_steps"],
                                       self.ns_bf16)
                ortho = ortho.to(params[indices[0]].dtype).unbind(0)  # one cast per stack
                for tall in (False, True):  # one add kernel per orientation (its own scale)
                    pairs = [(params[i], o.mT if tall else o)
                             for i, o in zip(indices, ortho) if _tall(params[i]) == tall]
                    if pairs:
                        rows, cols = pairs[0][0].shape
                        torch._foreach_add_([p for p, _ in pairs], [o for _, o in pairs],
                                            alpha=-group["lr"] * max(1.0, rows / cols) ** 0.5)


def _same_shape(params: list[torch.Tensor]) -> list[list[int]]:
    """Indices of params grouped by shape up to transposition: each group is
    orthogonalised as one stack."""
    by_shape: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        by_shape.setdefault(tuple(sorted(p.shape)), []).append(i)
    return list(by_shape.values())


def _tall(m: torch.Tensor) -> bool:
    return m.size(-2) > m.size(-1)


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
