"""Where a steering vector acts in a prompt of ``n`` tokens (token ``n`` is the answer).

* ``"residual"`` (the paper): add ``m * u`` to the residual stream after block ``l`` at the
  last prompt token (``last=k``: at each of the last ``k`` prompt tokens);
* ``"instruction"`` (Rimsky et al.): the same at every prompt token after the instruction;
* ``"state"``: add ``m * state_scale * delta`` to every component of layer ``l``'s recurrent
  state after token ``n - 2``, i.e. edit the cache before the final prompt token is read
  (``last=k``: before each of the last ``k`` tokens);
* ``"both"``: ``"residual"`` and ``"state"`` together, with the same multiplier.

An edit of the state after token ``t`` (or of the residual at ``t``) changes the output of
token ``t + 1`` (of ``t``) onwards: the statetap contract.
"""

from __future__ import annotations

from dataclasses import dataclass

MODE_NAMES = ("residual", "instruction", "state", "both")


@dataclass(frozen=True)
class Mode:
    """A steering mode.

    Attributes:
        name: the key of its results.
        residual: ``"last"`` (the last ``last`` prompt tokens), ``"instruction"`` (every
            token after the instruction) or None (no residual steering).
        state: edit the state before each of the last ``last`` prompt tokens.
        last: ``k`` above.
        state_scale: the state edit's multiplier is ``state_scale`` times the residual one.
    """

    name: str
    residual: str | None = "last"
    state: bool = False
    last: int = 1
    state_scale: float = 1.0

    def __post_init__(self) -> None:
        if self.residual not in ("last", "instruction", None):
            raise ValueError(
                f"Mode.residual must be 'last', 'instruction' or None, got {self.residual!r}"
            )
        if self.residual is None and not self.state:
            raise ValueError(f"mode {self.name!r} steers nothing")
        if not isinstance(self.last, int) or self.last < 1:
            raise ValueError(f"Mode.last must be a positive int, got {self.last!r}")

    def positions(self, length: int, instruction: int | None) -> tuple[list[int], list[int]]:
        """Token indices of a prompt of ``length`` tokens where the residual stream is
        steered, and after which the state is edited.

        Raises:
            ValueError: the prompt is too short, or has no instruction boundary for
                ``residual="instruction"``.
        """
        residual: list[int] = []
        if self.residual == "last":
            residual = list(range(length - self.last, length))
        elif self.residual == "instruction":
            if instruction is None:
                raise ValueError(
                    f"mode {self.name!r} steers after the instruction, but the prompts carry "
                    f"no instruction boundary (Prompts.instruction)"
                )
            residual = list(range(instruction, length))
            if not residual:
                raise ValueError(f"mode {self.name!r}: a prompt has no token after its instruction")
        state = list(range(length - self.last - 1, length - 1)) if self.state else []
        if min(residual + state) < 0:
            raise ValueError(f"mode {self.name!r} needs longer prompts than {length} tokens")
        return residual, state


def steering_mode(name: str, last: int = 1, state_scale: float = 1.0) -> Mode:
    """The mode called ``name`` (one of :data:`MODE_NAMES`); its results are keyed
    ``name``, or ``f"{name}-last{last}"`` when ``last > 1``."""
    if name not in MODE_NAMES:
        raise ValueError(f"mode must be one of {', '.join(MODE_NAMES)}; got {name!r}")
    key = name if last == 1 or name == "instruction" else f"{name}-last{last}"
    residual = {"residual": "last", "instruction": "instruction", "state": None, "both": "last"}
    return Mode(key, residual[name], name in ("state", "both"), last, state_scale)
