"""Rules every value read from a pipeline file follows, whichever section or stage it is for.

Pydantic's lax mode is made for JSON from web forms; pipeline files are TOML, which has real
booleans and real numbers, so two of its conversions only hide mistakes:

* ``true`` where a number is expected (``batch_size = true``) would silently become 1. Here it
  is refused: a boolean is accepted only by a key whose type admits a boolean.
* ``inf`` and ``nan`` (valid TOML floats) would pass ``gt=0`` checks and then break the run
  (``decode_timeout_s = inf``). Here every float must be finite.
* TOML integers are 64-bit, but Python's reader takes any size, and a larger one fails far from
  the file (SQLite, torch's seeding). Here an integer must fit in a signed 64-bit integer.
* A NUL character (``"\u0000"`` in TOML) in a text value makes every file-system call on it
  raise deep inside a run. Here no text value may hold one.

:class:`ScalarRules` is the base of the pipeline's section models (:mod:`imgflow.config.sections`)
and of every stage's ``Params`` (:class:`imgflow.stage.Params`), so a third-party stage gets the
same rules without writing a validator.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, ValidatorFunctionWrapHandler, field_validator


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _kind(value: Any) -> str:
    """What a key expected, judged from what its type made of ``true``/``false``."""
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    return "a value that is not true/false"


class ScalarRules(BaseModel):
    """Base model: finite floats, 64-bit integers, no NUL in text, no boolean as a number."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*", mode="wrap")
    @classmethod
    def _booleans_only_where_allowed(cls, value: Any, handler: ValidatorFunctionWrapHandler,
                                     info: ValidationInfo) -> Any:
        """Let the field's own type decide; refuse a boolean that it turned into something else.

        A key typed ``bool`` (or ``Any``) keeps ``True`` as ``True``; a key typed ``int``,
        ``float``, ``int | tuple[...]`` or a Literal of numbers either refuses it or converts it
        to 1/1.0, which is what is caught here.
        """
        result = handler(value)
        if isinstance(value, bool) and not isinstance(result, bool):
            shown = "true" if value else "false"
            kind = _kind(result)
            raise ValueError(f"expected {kind}, got {shown} (fix: give {info.field_name} {kind}; "
                             "true/false only fit on/off keys)")
        if isinstance(result, str) and "\x00" in result:
            raise ValueError(f"{value!r} contains a NUL character, which no path or name may hold "
                             "(fix: remove the \\u0000)")
        if isinstance(result, int) and not isinstance(result, bool) and not INT64_MIN <= result <= INT64_MAX:
            raise ValueError(f"expected an integer that fits in 64 bits (up to 2^63 - 1), got {result} "
                             f"(fix: give {info.field_name} a smaller value)")
        return result
