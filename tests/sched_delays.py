#!/usr/bin/env python3
"""Who keeps a server's threads waiting for a CPU during a reload.

Reads `perf sched timehist` output recorded while the benchmark ran one
scenario, and prints, per 20 ms since the manager forked the reload's
`ExecReload=` process, how long the server's threads waited for a CPU
(scheduling delay, per reload) and which other tasks ran on that CPU while
they waited (the server's other threads included: a program the reload
starts has the server's name), against the same figures per 20 ms outside
reloads. As root, with perf from Debian's linux-perf:

    perf sched record -o /tmp/sched.data -- sleep 15 &
    bash tests/bench 15 500 'handover (fd store)'
    perf sched timehist -i /tmp/sched.data > /tmp/timehist.txt
    python3 tests/sched_delays.py /tmp/timehist.txt hello_http

A reload starts where a process the manager forked (its name in brackets,
such as `(ore-exec)` or `(true)`) first runs; the first one, the unit's
`ExecStart=`, is skipped. The benchmark's own clients show up as `bench`:
they are the load, and there in steady state too.
"""

import bisect
import collections
import re
import sys

BIN = 0.020
BINS = 8
LONG_WAIT = 0.0003
LINE = re.compile(
    r"\s*([\d.]+)\s+\[(\d+)\]\s+(.+?)\[([\d/]+)\]\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)"
)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: sched_delays.py TIMEHIST-OUTPUT SERVER-COMM")
    path, server = sys.argv[1], sys.argv[2]
    # (end of a run on a CPU, cpu, task, its wait for the CPU, run length), s
    runs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            m = LINE.match(line)
            if m:
                t, cpu, comm, tid, _wait, delay, run = m.groups()
                runs.append((float(t), int(cpu), comm, tid, float(delay) / 1e3, float(run) / 1e3))
    if not runs:
        sys.exit(f"{path}: no perf sched timehist lines")

    first_seen = {}
    for t, _cpu, comm, tid, _d, run in runs:
        if comm.startswith("(") and tid not in first_seen:
            first_seen[tid] = t - run
    starts = sorted(first_seen.values())[1:]
    if not starts:
        sys.exit("no reload found: no process forked by the manager after ExecStart=")

    # The load runs until about one interval after the last reload.
    gaps = sorted(b - a for a, b in zip(starts, starts[1:])) or [BIN * BINS]
    end = starts[-1] + gaps[len(gaps) // 2]

    per_cpu = collections.defaultdict(list)
    for t, cpu, comm, tid, _d, run in runs:
        per_cpu[cpu].append((t - run, t, re.sub(r":\d+$", "", comm), tid))
    for lst in per_cpu.values():
        lst.sort()
    begins = {cpu: [r[0] for r in lst] for cpu, lst in per_cpu.items()}

    waited = collections.Counter()
    long_waits = collections.Counter()
    culprits = collections.defaultdict(collections.Counter)
    steady = BINS  # the bin for everything outside reloads
    for t, cpu, comm, tid, delay, run in runs:
        if not comm.startswith(server) or delay <= 0:
            continue
        i = bisect.bisect_right(starts, t) - 1
        if i < 0 or t > end:
            continue  # before the first reload or after the load ended
        offset = t - starts[i]
        b = int(offset / BIN) if offset < BIN * BINS else steady
        waited[b] += delay
        long_waits[b] += delay > LONG_WAIT
        # Who had this CPU while the server's thread was runnable.
        w0, w1 = t - run - delay, t - run
        lst = per_cpu[cpu]
        j = max(bisect.bisect_left(begins[cpu], w0) - 1, 0)
        while j < len(lst) and lst[j][0] < w1:
            s, e, other, other_tid = lst[j]
            overlap = min(e, w1) - max(s, w0)
            if overlap > 0 and other_tid != tid:
                culprits[b][other] += overlap
            j += 1

    reloads = len(starts)
    steady_slots = max((end - starts[0]) / BIN - reloads * BINS, 1.0)
    print(f"{reloads} reloads; per reload and 20 ms bin, or per 20 ms outside reloads:")
    print("| since ExecReload= forked | server's wait for a CPU, ms | waits over 0.3 ms | tasks that had the CPU meanwhile, ms |")
    print("|---|---|---|---|")
    for b in list(range(BINS)) + [steady]:
        scale = reloads if b != steady else steady_slots
        label = f"{b * 20}-{b * 20 + 20} ms" if b != steady else "outside reloads"
        top = ", ".join(
            f"{name} {secs * 1e3 / scale:.2f}" for name, secs in culprits[b].most_common(5)
        )
        print(f"| {label} | {waited[b] * 1e3 / scale:.2f} | {long_waits[b] / scale:.2f} | {top} |")


if __name__ == "__main__":
    main()
