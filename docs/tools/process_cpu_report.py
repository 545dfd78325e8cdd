"""Summarises a log of docs/tools/process_cpu/sitecustomize.py: CPU by test, the pytest workers' own, and the totals.

    python docs/tools/process_cpu_report.py LOG [--top N]
"""

import argparse
import collections
import json


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("log")
    p.add_argument("--top", type=int, default=40)
    a = p.parse_args()
    with open(a.log) as f:
        recs = [json.loads(line) for line in f]
    workers = [r for r in recs if r["worker"] and not r["test"] and r["argv"][:1] == ["-c"]]
    by_test = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for r in recs:
        if r["test"]:
            row = by_test[r["test"].rsplit(" ", 1)[0]]
            row[0] += 1
            row[1] += r["cpu"]
            row[2] += r["wall"]
    print(f"{len(recs)} processes recorded, {sum(r['cpu'] for r in recs):.0f} CPU s; {sum(r['tensorflow'] for r in recs)} imported TensorFlow")
    for w in workers:
        print(f"worker {w['worker']}: {w['cpu']:.0f} CPU s itself, {w['child_cpu']:.0f} in its children")
    print(f"\n{'CPU s':>7} {'procs':>5} {'wall s':>7}  test that started them")
    for test, (n, cpu, wall) in sorted(by_test.items(), key=lambda kv: -kv[1][1])[:a.top]:
        print(f"{cpu:7.1f} {n:5d} {wall:7.1f}  {test}")


if __name__ == "__main__":
    main()
