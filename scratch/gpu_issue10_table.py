"""Print the short summary of the GPU run: e2e contenders and the host-time rows."""
import json, sys
e2e = json.load(open(sys.argv[1]))
rows = e2e.get("suites", {}).get("e2e", {}).get("rows", [])
print(f"\n{e2e.get('meta', {}).get('gpu')}  copy {e2e.get('meta', {}).get('copy_tbps', 0):.2f} TB/s")
print(f"{'case':<18}{'impl':<28}{'tok/s':>8}{'ceil%':>7}{'xSDPA':>7}{'xSDPAc':>7}{'KV GiB':>8}{'peak':>7}{'comp s':>8}  err")
for r in rows:
    f = lambda k, fmt: (format(r[k], fmt) if isinstance(r.get(k), (int, float)) else "-")
    print(f"{r.get('case',''):<18}{r.get('impl',''):<28}{f('tokens_per_s','.1f'):>8}"
          f"{(format(100*r['frac_ceiling'],'.0f') if r.get('frac_ceiling') else '-'):>7}{f('vs_sdpa','.2f'):>7}"
          f"{f('vs_sdpa_static','.2f'):>7}{f('kv_cache_gib','.2f'):>8}{f('peak_gib','.1f'):>7}{f('compile_s','.0f'):>8}  {r.get('error') or ''}")
if len(sys.argv) > 2:
    for r in json.load(open(sys.argv[2])):
        print(f"eager attention() host time B={r['B']} N={r['N']}: {r['host_us_lean']} us lean, "
              f"{r['host_us_triton_launch_full_checks']} us with Triton's launch and full checks; equal={r['lean_equals_triton_launch']}")
