"""The FLOPs and bytes of a compiled step, with each while loop counted as often as it runs.

XLA's `cost_analysis()` counts a while loop's body once, so a step that scans its layers (or
micro-batches, or loss chunks) reports a fraction of its work. `loop_counted_cost` reads the
compiled HLO text, finds each loop's trip count, and multiplies its body's cost (the plan check,
`lima_jax.train.aot`).
"""

from __future__ import annotations

import re

import jax

_HEADER = re.compile(r"^(ENTRY )?%?([^\s(]+) \(")
_INSTRUCTION = re.compile(r"^\s*(ROOT )?%?([^\s=]+) = ")
_METADATA = re.compile(r',? metadata=\{(?:[^{}"]|"(?:[^"\\]|\\.)*")*\}')
_PASS_THROUGH = ("copy", "bitcast", "convert", "reshape")


def _closing(text: str, i: int, open_: str = "(", close: str = ")") -> int:
    """The index just past the bracket that closes the one at text[i]."""
    depth = 0
    while True:
        depth += (text[i] == open_) - (text[i] == close)
        i += 1
        if depth == 0:
            return i


class _Computation:
    """One computation of an HLO module's text: its lines and its instructions by name."""

    def __init__(self, name: str, lines: list[str]):
        self.name, self.lines, self.instructions, self.root = name, lines, {}, None
        for line in lines[1:-1]:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            i = match.end()
            i = _closing(line, i) + 1 if line[i] == "(" else line.index(" ", i) + 1  # the shape
            j = line.index("(", i)
            k = _closing(line, j)
            opcode, args = line[i:j], line[j + 1:k - 1]
            operands = [a.strip().lstrip("%") for a in args.split(",")] if args and opcode != "constant" else []
            instruction = {"opcode": opcode, "operands": operands, "arg": args, "attrs": line[k:]}
            self.instructions[match.group(2)] = instruction
            if match.group(1):
                self.root = instruction

    def resolve(self, name: str) -> dict | None:
        """The instruction `name` is, through copies, bitcasts, converts and reshapes."""
        instruction = self.instructions.get(name)
        for _ in range(8):
            if not instruction or instruction["opcode"] not in _PASS_THROUGH:
                break
            instruction = self.instructions.get(instruction["operands"][0])
        return instruction

    def constant(self, name: str) -> int | None:
        instruction = self.resolve(name)
        if instruction and instruction["opcode"] == "constant":
            try:
                return int(instruction["arg"])
            except ValueError:
                return None
        return None

    def parameter_element(self, name: str) -> int | None:
        """k where `name` is element k of the computation's (tuple) parameter."""
        instruction = self.resolve(name)
        if instruction and instruction["opcode"] == "get-tuple-element":
            source = self.instructions.get(instruction["operands"][0])
            index = re.search(r"index=(\d+)", instruction["attrs"])
            if index and source and source["opcode"] == "parameter":
                return int(index.group(1))
        return None


def _split_module(text: str) -> tuple[dict[str, _Computation], str]:
    computations, entry, name, lines = {}, None, None, []
    for line in text.splitlines():
        if name is None:
            match = _HEADER.match(line)
            if match and line.rstrip().endswith("{"):
                name, lines = match.group(2), [line]
                entry = name if match.group(1) else entry
            continue
        lines.append(line)
        if line == "}":
            computations[name] = _Computation(name, lines)
            name = None
    return computations, entry


def _loop_parts(instruction: dict) -> tuple[str, str]:
    attrs = instruction["attrs"]
    return (re.search(r"condition=%?([^\s,]+)", attrs).group(1),
            re.search(r"body=%?([^\s,]+)", attrs).group(1))


def _trip_count(computations: dict[str, _Computation], caller: _Computation, loop: dict) -> int | None:
    """A while loop's trip count: XLA's `known_trip_count` where the backend records it (CPU,
    GPU), else read off the loop (TPU): a condition `counter < N` on one element of the loop's
    tuple, that element's initial constant, and the constant the body adds to it."""
    known = re.search(r'"known_trip_count":\{"n":"(\d+)"\}', loop["attrs"])
    if known:
        return int(known.group(1))
    condition_name, body_name = _loop_parts(loop)
    condition, body = computations[condition_name], computations[body_name]
    root = condition.root
    if not root or root["opcode"] != "compare" or len(root["operands"]) != 2:
        return None
    direction = re.search(r"direction=(\w+)", root["attrs"]).group(1)
    left, right = root["operands"]
    k, bound = condition.parameter_element(left), condition.constant(right)
    if k is None:
        k, bound = condition.parameter_element(right), condition.constant(left)
        direction = {"LT": "GT", "GT": "LT", "LE": "GE", "GE": "LE"}.get(direction, direction)
    initial = caller.resolve(loop["operands"][0]) if loop["operands"] else None
    if k is None or bound is None or not initial or initial["opcode"] != "tuple" or \
            not body.root or body.root["opcode"] != "tuple":
        return None
    start = caller.constant(initial["operands"][k])
    increment = body.resolve(body.root["operands"][k])
    step = None
    if increment and increment["opcode"] == "add":
        x, y = increment["operands"]
        step = body.constant(y) if body.parameter_element(x) == k else (
            body.constant(x) if body.parameter_element(y) == k else None)
    if start is None or not step:
        return None
    if direction == "LT" and step > 0:
        return max(0, -(-(bound - start) // step))
    if direction == "LE" and step > 0:
        return max(0, (bound - start) // step + 1)
    if direction == "GT" and step < 0:
        return max(0, -(-(start - bound) // -step))
    if direction == "GE" and step < 0:
        return max(0, (start - bound) // -step + 1)
    if direction == "NE" and (bound - start) % step == 0 and (bound - start) // step >= 0:
        return (bound - start) // step
    return None


def _cost_client():
    try:
        return jax.devices("cpu")[0].client
    except RuntimeError:  # a platform list without the CPU
        return jax.devices()[0].client


def loop_counted_cost(executable) -> dict:
    """FLOPs and bytes accessed per device of a compiled (partitioned) program, from XLA's cost
    analysis, with every while loop's body counted as many times as the loop runs.

    `Compiled.cost_analysis()` counts a while loop's body once, so a step that scans its layers
    (or micro-batches, or loss chunks) reports a fraction of its work (measured: a quarter, for
    a 12-layer scan). Here each loop body is analysed on its own (the module's text with that
    body as its entry computation, through XLA's own HloCostAnalysis) and counted its trip count
    times, inner loops first. Returns `flops` and `bytes_accessed` so counted, XLA's figures as
    it reports them (`xla_flops`, `xla_bytes_accessed`), the loops' trip counts, and the loops
    whose trip count could not be read (counted once, as XLA does).

    The FLOPs match the model's count (tests/train/test_aot.py). The bytes are an upper bound: XLA
    counts a whole loop-carried buffer where a loop updates a slice of it in place (the
    accumulators of the windowed collective matmuls of FSDP, measured: several times the bytes a
    65B layer's weights and activations take), and that now counts every trip."""
    from jax._src.lib import _jax
    from jaxlib import _hlo

    reported = executable.cost_analysis()
    if isinstance(reported, (list, tuple)):
        reported = reported[0]
    out = {"xla_flops": float(reported.get("flops", 0.0)),
           "xla_bytes_accessed": float(reported.get("bytes accessed", 0.0))}
    out.update(flops=out["xla_flops"], bytes_accessed=out["xla_bytes_accessed"], loops=[],
               uncounted_loops=0)
    try:
        computations, entry = _split_module(_METADATA.sub("", executable.as_text()))
    except Exception as err:  # noqa: BLE001 - a module text this parser does not follow
        out["loop_count_error"] = f"{type(err).__name__}: {err}"
        return out
    if entry is None:
        return out
    raw_cost, true_cost = {}, {}

    def raw(name: str) -> tuple[float, float]:
        """XLA's cost of `name` run once, loop bodies inside it counted once."""
        if name not in raw_cost:
            blocks = []
            for other in computations:
                block = "\n".join(computations[other].lines)
                block = block.removeprefix("ENTRY ") if other == entry else block
                blocks.append("ENTRY " + block if other == name else block)
            module = _hlo.hlo_module_from_text("HloModule cost\n\n" + "\n\n".join(blocks))
            cost = _jax.hlo_module_cost_analysis(_cost_client(), module)
            raw_cost[name] = (float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0)))
        return raw_cost[name]

    def loops_in(name: str, seen: set) -> list[tuple[str, int | None]]:
        """(body, trip count) of the loops `name` runs, itself or through calls, not inside
        another loop."""
        computation, found, loop_parts = computations[name], [], set()
        for instruction in computation.instructions.values():
            if instruction["opcode"] == "while":
                condition, body = _loop_parts(instruction)
                found.append((body, _trip_count(computations, computation, instruction)))
                loop_parts |= {condition, body}
        for called in set(re.findall(r"%([^\s,(){}]+)", "\n".join(computation.lines[1:]))):
            if called in computations and called not in loop_parts and called not in seen:
                seen.add(called)
                found += loops_in(called, seen)
        return found

    def counted(name: str) -> tuple[float, float]:
        if name not in true_cost:
            flops, accessed = raw(name)
            for body, trips in loops_in(name, {name}):
                out["loops"].append(trips)
                if trips is None:
                    out["uncounted_loops"] += 1
                    continue
                body_flops, body_bytes = counted(body)
                raw_flops, raw_bytes = raw(body)
                flops += trips * body_flops - raw_flops
                accessed += trips * body_bytes - raw_bytes
            true_cost[name] = (flops, accessed)
        return true_cost[name]

    try:
        entry_flops, entry_bytes = raw(entry)
        flops, accessed = counted(entry)
    except Exception as err:  # noqa: BLE001 - a module text this parser does not follow
        out["loop_count_error"] = f"{type(err).__name__}: {err}"
        return out
    # XLA's own figures, plus what the loops' other trips add.
    out["flops"] = out["xla_flops"] + flops - entry_flops
    out["bytes_accessed"] = out["xla_bytes_accessed"] + accessed - entry_bytes
    return out
