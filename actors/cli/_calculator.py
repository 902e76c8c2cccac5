"""The chat's calculator: a small arithmetic language whose every evaluation is bounded.

Python's integers grow without limit, and one big-integer operation is a single C call that
holds the GIL until it is done: ``((9**999)**999)**999`` would run for minutes and nothing
could stop it. So the work is bounded before it is done, and the evaluation runs where a
cancellation can stop it:

* **Sizes.** Before an integer ``**`` or ``*`` is computed, the size of its result is
  estimated (``exponent * log2(|base|)`` bits, or the sum of the operands' bits); an operation
  whose result would exceed :attr:`CalculatorLimits.max_bits` is refused, and so is any
  intermediate integer that ends up larger. With operands of at most 65,536 bits, the slowest
  single operation (a long division) takes about 1.5 ms on one core.
* **Time.** The evaluation checks a time budget (:attr:`CalculatorLimits.time_budget_secs`)
  before every step of the expression.
* **Cancellation.** :func:`calculate_in_thread` runs the evaluation in a worker thread, so the
  trio thread stays free (Ctrl-C, interruptions, the rest of the chat). A cancellation asks the
  evaluation to stop before its next step, and waits for it (a millisecond or two): no
  calculation outlives the call that asked for it.
"""

from __future__ import annotations

import ast
import math
import operator
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import attrs
import trio

__all__ = [
    "DEFAULT_LIMITS",
    "CalculationStopped",
    "CalculatorLimits",
    "calculate",
    "calculate_in_thread",
]

T = TypeVar("T")


@attrs.frozen
class CalculatorLimits:
    """How much work one evaluation may do.

    Args:
        max_chars: Longest expression, in characters.
        max_bits: Largest integer, in bits, that any step may produce (65,536 bits is about
            19,700 decimal digits).
        max_result_bits: Largest integer result, in bits (4,096 bits is about 1,233 digits).
        time_budget_secs: Longest evaluation, in seconds of real time.
    """

    max_chars: int = 500
    max_bits: int = 65_536
    max_result_bits: int = 4_096
    time_budget_secs: float = 1.0


DEFAULT_LIMITS = CalculatorLimits()

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.UAdd: operator.pos,
    ast.USub: operator.neg,
}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "sqrt": math.sqrt,
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "log": math.log,
    "log10": math.log10,
    "exp": math.exp,
    "abs": abs,
    "round": round,
    "floor": math.floor,
    "ceil": math.ceil,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_LOG2_10 = math.log2(10)


class CalculationStopped(Exception):
    """The evaluation was asked to stop (``stop`` was set: its caller was cancelled)."""


@attrs.define
class _Evaluation:
    limits: CalculatorLimits
    stop: threading.Event | None
    deadline: float

    def too_large(self) -> ValueError:
        digits = int(self.limits.max_bits / _LOG2_10)
        return ValueError(
            f"an intermediate result would be too large (more than {self.limits.max_bits} "
            f"bits, about {digits} digits); simplify the expression"
        )

    def check_bits(self, bits: float) -> None:
        if bits > self.limits.max_bits:
            raise self.too_large()

    def step(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise CalculationStopped
        if time.monotonic() > self.deadline:
            raise ValueError(
                f"the calculation takes too long (over {self.limits.time_budget_secs:g} s); "
                "simplify the expression"
            )

    def binary(self, op: type[ast.operator], left: Any, right: Any) -> Any:
        if isinstance(left, int) and isinstance(right, int):
            if op is ast.Pow and right > 0 and abs(left) > 1:
                self.check_bits(right * math.log2(abs(left)))
            elif op is ast.Mult:
                self.check_bits(left.bit_length() + right.bit_length())
        return _BINARY[op](left, right)

    def call(self, name: str, args: list[Any]) -> Any:
        if name == "round" and len(args) == 2 and isinstance(args[1], int):
            # round(int, -n) computes 10**n.
            self.check_bits(abs(args[1]) * _LOG2_10)
        return _FUNCTIONS[name](*args)

    def ev(self, node: ast.AST) -> Any:
        self.step()
        value: Any
        if isinstance(node, ast.Expression):
            value = self.ev(node.body)
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            value = node.value
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
            left, right = self.ev(node.left), self.ev(node.right)
            self.step()
            value = self.binary(type(node.op), left, right)
        elif isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            value = _UNARY[type(node.op)](self.ev(node.operand))
        elif isinstance(node, ast.Name) and node.id in _CONSTANTS:
            value = _CONSTANTS[node.id]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in _FUNCTIONS
            and not node.keywords
        ):
            args = [self.ev(a) for a in node.args]
            self.step()
            value = self.call(node.func.id, args)
        else:
            raise ValueError(f"unsupported element in expression: {ast.dump(node)[:60]}")
        if isinstance(value, int) and value.bit_length() > self.limits.max_bits:
            raise self.too_large()
        return value


def calculate(
    expression: str,
    *,
    limits: CalculatorLimits = DEFAULT_LIMITS,
    stop: threading.Event | None = None,
) -> float | int:
    """Evaluate an arithmetic expression safely (numbers, + - * / // % **, parentheses,
    ``sqrt sin cos tan log log10 exp abs round floor ceil``, ``pi e tau``). No names, no
    attribute access, no calls of anything else. The work is bounded by ``limits``.

    Runs on the calling thread; from trio, use :func:`calculate_in_thread`.

    Args:
        expression: The expression.
        limits: How much work the evaluation may do.
        stop: When set (from another thread), the evaluation stops before its next step.

    Raises:
        CalculationStopped: ``stop`` was set.
        ValueError: anything outside that language, a result or an intermediate result too
            large, an evaluation over its time budget; the message says which.
    """
    if len(expression) > limits.max_chars:
        raise ValueError(f"expression too long ({limits.max_chars} characters at most)")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not an arithmetic expression: {exc.msg}") from None
    evaluation = _Evaluation(limits, stop, time.monotonic() + limits.time_budget_secs)
    try:
        value = evaluation.ev(tree)
    except ZeroDivisionError:
        raise ValueError("division by zero") from None
    except OverflowError:
        raise ValueError("result too large") from None
    except TypeError as exc:
        raise ValueError(f"wrong arguments: {exc}") from None
    except RecursionError:
        raise ValueError("expression nested too deeply") from None
    if isinstance(value, complex):
        raise ValueError("the result is not a real number")
    if isinstance(value, int) and value.bit_length() > limits.max_result_bits:
        raise ValueError("result too large")
    return value  # type: ignore[no-any-return]


async def calculate_in_thread(
    expression: str, *, limits: CalculatorLimits = DEFAULT_LIMITS
) -> float | int:
    """:func:`calculate` in a worker thread. A cancellation (an interruption, Ctrl-C) stops the
    evaluation before its next step and waits for it to end, then propagates.

    Raises:
        ValueError: as :func:`calculate`.
    """
    return await _run_stoppable(lambda stop: calculate(expression, limits=limits, stop=stop))


async def _run_stoppable(fn: Callable[[threading.Event], T]) -> T:
    """Run ``fn(stop)`` in a worker thread. If the caller is cancelled, set ``stop`` and wait,
    shielded, until ``fn`` has returned (it must watch ``stop``)."""
    stop = threading.Event()
    finished = trio.Event()
    token = trio.lowlevel.current_trio_token()
    lock = threading.Lock()
    started = False

    def work() -> T:
        nonlocal started
        with lock:
            if stop.is_set():  # cancelled before the thread started: do nothing
                raise CalculationStopped
            started = True
        try:
            return fn(stop)
        finally:
            token.run_sync_soon(finished.set)

    try:
        return await trio.to_thread.run_sync(work, abandon_on_cancel=True)
    except BaseException:
        with lock:
            stop.set()
            running = started
        if running:
            with trio.CancelScope(shield=True):
                await finished.wait()
        raise
