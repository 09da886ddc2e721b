"""What every gradient trainer does the same way: one optimiser step, and its resumable state.

The classifier, detector and segmenter trainers (and the colorizer's, for :func:`to_cpu`) each
hold a network, an optimiser, an optional learning-rate schedule and an optional loss scaler
(mixed precision on CUDA). Their checkpoints must load on a machine without CUDA and resume to
the same weights, so the state is copied to the CPU the same way everywhere; keeping it here
means a fix to one trainer's resume is a fix to all of them.

This module does not import torch: it only calls methods of the objects it is given.
"""

from __future__ import annotations

from typing import Any


def to_cpu(value: Any) -> Any:
    """A nested optimiser state with every tensor copied to the CPU (a checkpoint must load without CUDA)."""
    if hasattr(value, "detach"):
        return value.detach().cpu().clone()
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_cpu(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_cpu(v) for v in value)
    return value


def optimizer_step(loss: Any, optimizer: Any, scaler: Any = None) -> None:
    """Backward and one step, through the loss scaler when mixed precision uses one."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def network_state(net: Any) -> dict[str, Any]:
    """The network's state dict, detached CPU copies."""
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


def optimization_state(net: Any, optimizer: Any, scheduler: Any = None, scaler: Any = None) -> dict[str, Any]:
    """Network, optimiser, schedule and loss scaler, as a trainer's ``state_dict`` holds them."""
    return {"model": network_state(net),
            "optimizer": to_cpu(optimizer.state_dict()),
            "scheduler": scheduler.state_dict() if scheduler is not None else {},
            "scaler": scaler.state_dict() if scaler is not None else {}}


def restore_optimization(state: dict[str, Any], net: Any, optimizer: Any, scheduler: Any = None,
                         scaler: Any = None) -> None:
    """Load what :func:`optimization_state` saved (a schedule or scaler only when both sides have one)."""
    net.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler"):
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
