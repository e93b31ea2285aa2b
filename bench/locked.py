#!/usr/bin/env python3
"""Locked instructions per request in a callgrind output made with --dump-instr=yes.

A locked read-modify-write (`lock`-prefixed, or `xchg` with memory) costs about 6 ns on this
machine however few instructions it is: reference counts, locks, wakers. callgrind counts each
as one instruction; this counts them, by function.

    bench/locked.py CALLGRIND_OUT REQUESTS [TOP]     (bench/callgrind.sh runs it with LOCKED=1)
"""
import collections
import re
import subprocess
import sys


def main():
    path, requests = sys.argv[1], int(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 25
    names = {"ob": {}, "fn": {}}
    counts = collections.Counter()  # (object, address) -> executions
    where = {}  # (object, address) -> function
    ob = fn = None
    last = 0
    after_call = False
    for line in open(path):
        line = line.rstrip("\n")
        m = re.match(r"(c?)(ob|fn)=\((\d+)\)(?: (.*))?$", line)
        if m:
            kind = m.group(2)
            if m.group(4):
                names[kind][m.group(3)] = m.group(4)
            if not m.group(1):  # ob= / fn= set the context; cob= / cfn= only name
                if kind == "ob":
                    ob = names["ob"].get(m.group(3))
                else:
                    fn = names["fn"].get(m.group(3))
            continue
        if line.startswith("calls="):
            after_call = True  # the next cost line is the call's inclusive cost
            continue
        if not line or line[0] not in "0123456789+-*":
            continue
        parts = line.split()
        a = parts[0]
        if a.startswith("0x"):
            addr = int(a, 16)
        elif a[0] in "+-":
            step = int(a[1:], 16) if a[1:].startswith("0x") else int(a[1:])
            addr = last + step if a[0] == "+" else last - step
        elif a == "*":
            addr = last
        else:
            addr = int(a)
        last = addr
        if after_call:
            after_call = False
            continue
        if len(parts) >= 3:
            counts[(ob, addr)] += int(parts[2])
            where[(ob, addr)] = fn
    total = 0
    by_fn = collections.Counter()
    for obj in {o for o, _ in counts if o}:
        dis = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj],
                             capture_output=True, text=True).stdout
        locked = {}
        for l in dis.splitlines():
            m = re.match(r"\s*([0-9a-f]+):\s+(.*)", l)
            if m and (m.group(2).startswith("lock ") or re.match(r"xchg\s+\S+,\S*\(", m.group(2))):
                locked[int(m.group(1), 16)] = m.group(2).split()[0 if not m.group(2).startswith("lock") else 1]
        for (o, addr), c in counts.items():
            if o == obj and addr in locked:
                total += c
                by_fn[(where[(o, addr)] or "?", locked[addr])] += c
    print(f"locked instructions per request: {total / requests:.1f}")
    for (f, ins), c in by_fn.most_common(top):
        if c / requests >= 0.05:
            print(f"{c / requests:6.2f}  {ins:8s} {f[:140]}")


main()
