"""Before/after comparison of two source trees of fastckpt (each built in
place: python setup.py build_ext --inplace), side by side in one run:
processes alternate between the trees, 5 rounds per workload, min and
median of each.

    python benchmarks/ab_compare.py /path/to/before /path/to/after [rounds] [small,nested,big]

Prints the markdown table the changelog quotes."""
import json, os, statistics, subprocess, sys
before, after = sys.argv[1], sys.argv[2]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 5
sample = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ab_sample.py")
res = {}
kinds = sys.argv[4].split(",") if len(sys.argv) > 4 else ["small", "nested", "big"]
for kind in kinds:
    for r in range(rounds):
        pair = (("before", before), ("after", after))
        for v, pp in pair if r % 2 == 0 else pair[::-1]:
            out = subprocess.run([sys.executable, sample, kind], env=dict(os.environ, PYTHONPATH=pp),
                                 capture_output=True, text=True)
            line = [l for l in out.stdout.splitlines() if l.startswith("{")]
            if not line:
                print(v, kind, out.stderr[-500:]); continue
            for case, t in json.loads(line[-1]).items():
                res.setdefault((kind, case), {}).setdefault(v, []).append(t)
names = {"small": "100,000 × 1 KiB", "nested": "nested, 10,000 tensors + string + scalars", "big": "1 GiB GPT-like, 256 × 4 MiB"}
print("| workload | case | before min / median (s) | after min / median (s) | after / before (min, median) |")
print("|---|---|---|---|---|")
for (kind, case), d in res.items():
    b, a = statistics.median(d["before"]), statistics.median(d["after"])
    bm, am = min(d["before"]), min(d["after"])
    print(f"| {names[kind]} | {case} | {bm:.4f} / {b:.4f} | {am:.4f} / {a:.4f} | {am / bm:.2f}, {a / b:.2f} |")
