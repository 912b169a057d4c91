#!/usr/bin/env python3
"""Instructions per wasm function from a callgrind profile of the strategy benchmark.

callgrind counts the instructions of JIT-compiled wasm too, but without symbols: they land in
an object named "???". With GYOZA_WASM_PERFMAP=1 the engine writes /tmp/perf-<pid>.map (start,
size and name of each compiled function); this script adds callgrind's per-address counts up
per function (BENCHMARKS.md, "Strategies", has the whole procedure).

    python3 host/benches/callgrind_jit.py callgrind.out.PID /tmp/perf-PID.map [CALLS]

Needs a profile taken with --dump-instr=yes. Prints instructions per call (divided by CALLS,
default 1), most first.
"""

import bisect
import collections
import re
import sys


def main() -> None:
    out, perf_map = sys.argv[1], sys.argv[2]
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    functions = []
    with open(perf_map) as f:
        for line in f:
            start, size, name = line.rstrip("\n").split(" ", 2)
            functions.append((int(start, 16), int(size, 16), name))
    functions.sort()
    starts = [f[0] for f in functions]

    def function_at(address: int):
        i = bisect.bisect_right(starts, address) - 1
        if i >= 0 and address < functions[i][0] + functions[i][1]:
            return functions[i][2]
        return None

    cost = collections.Counter()
    last, after_calls = 0, False
    line_re = re.compile(r"^(0x[0-9a-f]+|[+-]\d+|\*)\s+(?:[+-]?\d+|\*)\s+(\d+)")
    with open(out) as f:
        for line in f:
            if not line.strip() or line[0].isalpha():
                after_calls = line.startswith("calls=")
                continue
            m = line_re.match(line)
            if not m:
                continue
            position = m.group(1)
            if position.startswith("0x"):
                last = int(position, 16)
            elif position != "*":
                last += int(position)
            if after_calls:  # the cost line after calls= is the callee's, inclusive
                after_calls = False
                continue
            name = function_at(last)
            if name:
                cost[name] += int(m.group(2))
    total = sum(cost.values())
    print(f"{total / calls:>12.0f}  all wasm code")
    for name, n in cost.most_common(15):
        print(f"{n / calls:>12.0f}  {name}")


if __name__ == "__main__":
    main()
