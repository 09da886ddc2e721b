"""``[run] executor`` and ``[run.ray]``: where a run executes, checked without starting anything.

The executor changes where work happens, never what it produces, so none of these keys enter
the pipeline fingerprint. Validation here imports no Ray: ``imgflow validate`` checks a Ray
pipeline on a machine without Ray installed.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from imgflow.errors import Problem


class RaySection(BaseModel):
    """``[run.ray]``: the cluster to use and how many actors of each kind to run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str | None = Field(
        None, description="Unset: start a local Ray for this run. \"auto\": join the cluster this machine "
                          "belongs to (ray start). \"HOST:PORT\" or \"ray://HOST:10001\": join that cluster.")
    num_gpus: float = Field(0, ge=0, description="GPUs per stage actor (0: stages run on CPUs).")
    stage_cpus: float = Field(1, ge=0, description="CPUs reserved per stage actor.")
    min_actors: int = Field(1, ge=1, le=10_000, description="Stage actors kept running (weights load once per actor).")
    max_actors: int | None = Field(
        None, ge=1, le=10_000, description="Stage actors Ray may scale up to (default: min_actors).")
    decode_actors: int = Field(
        1, ge=1, le=10_000, description="Decode actors, each with its own decode worker processes.")
    decode_cpus: float = Field(
        1, gt=0, le=256, description="CPUs per decode actor; it runs that many decode processes (rounded up).")
    window: int = Field(
        10_000, ge=1, le=10_000_000,
        description="Work items handed to Ray per dispatch: bounds the driver's memory on huge folders.")
    object_store_mb: int | None = Field(
        None, ge=64, description="Object store size when imgflow starts a local Ray (unset: Ray's default).")

    @model_validator(mode="after")
    def _actor_range(self) -> RaySection:
        if self.max_actors is not None and self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) is below min_actors ({self.min_actors}) "
                             "(fix: raise max_actors or remove it)")
        return self

    @property
    def actor_range(self) -> tuple[int, int]:
        """(min, max) stage actors."""
        return self.min_actors, self.max_actors or self.min_actors

    @property
    def decode_workers(self) -> int:
        """Decode processes per decode actor."""
        return max(1, -int(-self.decode_cpus // 1))


def executor_problems(where: str, run: Any, stages: list[Any]) -> list[Problem]:
    """What the chosen executor cannot do with this pipeline (training on Ray, CUDA without GPUs)."""
    if run is None or run.executor != "ray":
        return []
    problems = []
    trainer = next((s for s in stages if s.cls is not None and s.cls.consumes), None)
    if trainer is not None:
        problems.append(Problem(
            f"{where} [run] executor",
            f"training runs ({trainer.use}) run on the local executor only",
            "set executor = \"local\" (or --executor local) for this pipeline"))
    if isinstance(run.device, str) and run.device.startswith("cuda") and run.ray.num_gpus == 0:
        problems.append(Problem(
            f"{where} [run] device",
            f"device = {run.device!r} on the Ray executor, but [run.ray] num_gpus = 0 gives the stage "
            "actors no GPU", "set [run.ray] num_gpus = 1 (GPUs per stage actor), or device = \"auto\""))
    return problems
