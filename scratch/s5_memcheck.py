"""compute-sanitizer memcheck target: decompress (both spaces, every width, D 64/128/256), the
dequantise prefill route (chunk and whole prompt, masks), the exact-token partials (fused prologue)."""
import torch
from tqgen import TurboQuant, attention
from tqgen.ops.exact_tokens import ExactTokens, attention_with_exact
dev = "cuda"
for bits in (2, 3, 4):
    for d in (64, 128, 256):
        tq = TurboQuant(d, bits)
        c = tq.compress(torch.randn(2, 3, 77, d, device=dev, dtype=torch.float16))
        tq.decompress(c, rotated=True); tq.decompress(c, rotated=False); tq.decompress(c, dtype=torch.float32)
tq = TurboQuant(128, 4)
for n_q, n_kv in ((40, 300), (70, 70)):
    q = torch.randn(2, 8, n_q, 128, device=dev, dtype=torch.float16)
    kc = tq.compress(torch.randn(2, 2, n_kv, 128, device=dev, dtype=torch.float16))
    vc = tq.compress(torch.randn(2, 2, n_kv, 128, device=dev, dtype=torch.float16))
    attention(q, kc, vc, is_causal=True)
    mask = torch.rand(2, 1, n_q, n_kv, device=dev) > 0.3
    attention(q, kc, vc, attention_mask=mask)
q = torch.randn(2, 32, 1, 128, device=dev, dtype=torch.float16)
kc = tq.compress(torch.randn(2, 8, 500, 128, device=dev, dtype=torch.float16))
vc = tq.compress(torch.randn(2, 8, 500, 128, device=dev, dtype=torch.float16))
for count in (4, 100):
    ex = ExactTokens(torch.randn(2, 8, count, 128, device=dev, dtype=torch.float16),
                     torch.randn(2, 8, count, 128, device=dev, dtype=torch.float16), 4)
    attention_with_exact(q, kc, vc, ex)
torch.cuda.synchronize()
print("memcheck target done")
