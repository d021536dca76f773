"""summary.txt of scripts/gpu-check.sh: selftest totals, failed checks, and Sudo vs PyTorch + diffusers per step."""
import json, os, sys

selftest_path, reference_path, info_path = sys.argv[1:4]
rows = json.load(open(selftest_path)) if os.path.exists(selftest_path) else []
ref = json.load(open(reference_path)) if os.path.exists(reference_path) else {"rows": [], "meta": {}}
if os.path.exists(info_path):
    print("".join(l for l in open(info_path) if l.split(" ")[0] in ("libtorch", "cuda", "cuda:0", "cpu", "oneDNN", "attention")
                  or l.startswith("  cuda:") or l.startswith("cuda versions")), end="")
failed = [r for r in rows if not r["passed"]]
skipped = [r for r in rows if r.get("skipped")]
print(f"selftest: {len(rows)} checks, {len(rows) - len(failed)} passed, {len(failed)} failed, {len(skipped)} skipped")
for r in failed:
    print(f"  FAIL {r['section']} {r['name']}: {r['detail']}")
if ref.get("meta"):
    m = ref["meta"]
    print(f"reference: torch {m.get('torch')} CUDA {m.get('cuda')}, diffusers {m.get('diffusers')}, transformers {m.get('transformers')}, {m.get('gpu')}")
by_name = {r["name"]: r for r in ref.get("rows", [])}
print(f"{'step':52} {'Sudo s':>8} {'PyTorch s':>9} {'ratio':>6} {'Sudo MB':>9} {'PyTorch MB':>10}")
for r in rows:
    if r.get("seconds_per_step") is None:
        continue
    p = by_name.get(r["name"], {})
    ps = p.get("seconds_per_step")
    ratio = f"{r['seconds_per_step'] / ps:.2f}" if ps else "-"
    mb = r.get("peak_allocated_mb")
    pmb = p.get("peak_allocated_mb")
    fmt = lambda x, f: "-" if x is None else format(x, f)
    print(f"{r['name']:52} {r['seconds_per_step']:8.3f} {fmt(ps, '.3f'):>9} {ratio:>6} {fmt(mb, '.0f'):>9} {fmt(pmb, '.0f'):>10}")
for p in ref.get("rows", []):
    if "error" in p:
        print(f"  reference {p['name']}: {p['error']}")
