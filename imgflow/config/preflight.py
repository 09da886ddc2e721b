"""Each stage's preflight (:meth:`imgflow.Stage.preflight`) run over a loaded pipeline.

Errors become problems of the pipeline (``validate`` and ``run`` exit 2, naming the stage and
the file); warnings (weights a run would download first) are kept on the pipeline for
``validate`` to print.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from imgflow.errors import ImgflowError, Problem

if TYPE_CHECKING:  # pragma: no cover
    from imgflow.config.spec import StageSpec
    from imgflow.stage import Stage


def preflight(where: str, specs: list[StageSpec], stages: list[Stage], problems: list[Problem]) -> list[str]:
    """Append each stage's preflight errors to ``problems``; return its warnings as text.

    ``stages`` are the built stages of ``specs`` (``Pipeline.build_stages()``), in order.
    """
    warnings: list[str] = []
    for spec, stage in zip(specs, stages, strict=True):
        here = f"{where} [[stages]] #{spec.index + 1} ({spec.use})"
        try:
            notices = list(stage.preflight())
        except ImgflowError as exc:
            problems.append(Problem(here, str(exc)))
            continue
        except Exception as exc:  # a third-party stage's bug must not hide the other problems
            problems.append(Problem(here, f"its preflight check raised {type(exc).__name__}: {exc} "
                                          "(a bug in the plugin that provides the stage)"))
            continue
        for notice in notices:
            if notice.error:
                problems.append(Problem(here, notice.message, notice.fix))
            else:
                warnings.append(f"{here}: {notice}")
    return warnings
