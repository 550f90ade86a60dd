# student trained on decoded AE samples, labelled hard or by a teacher
import sys, json, argparse
from common import *
from d3fmt.models.decoder import build_decoder
ap = argparse.ArgumentParser()
ap.add_argument("--ae"); ap.add_argument("--teacher", type=int, default=0); ap.add_argument("--T", type=float, default=1.0)
ap.add_argument("--steps", type=int, default=600); ap.add_argument("--tau", type=float, default=1.0)
ap.add_argument("--L", type=int, default=0, help="use only the first L priors per class")
ap.add_argument("--mix", type=float, default=0.0, help="prob of interpolating two priors (any class) when teacher-labelled")
ap.add_argument("--student", type=int, default=32)
ap.add_argument("--n", type=int, default=0, help="ae2: per-image priors, n random images per class")
ap.add_argument("--q", type=int, default=0, help="quantise mu to q bits per dim (per-class scale)")
a = ap.parse_args()
torch.set_num_threads(1)
ae = torch.load(a.ae); dec = build_decoder(ae["cfg"], {k: v.numpy() for k, v in ae["state"].items()}).eval()
if a.n:
    rng = np.random.default_rng(0); mus, sds = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(Y == c))[:a.n]
        mus.append(ae["m"][idx]); sds.append(ae["s2"][idx].mean(0).sqrt().expand(a.n, -1))
    mu, sd = torch.stack(mus), torch.stack(sds); L = a.n
else:
    mu, lv = ae["mu"], ae["logvar"]; Lall = mu.shape[0] // 10; L = a.L or Lall
    mu = mu.view(10, Lall, -1)[:, :L]; sd = (0.5 * lv).exp().view(10, Lall, -1)[:, :L]
if a.q:
    lo, hi = mu.amin((1, 2), keepdim=True), mu.amax((1, 2), keepdim=True); lev = 2 ** a.q - 1
    mu = lo + ((mu - lo) / (hi - lo) * lev).round() / lev * (hi - lo)
teacher = None
if a.teacher:
    teacher = convnet(a.teacher); teacher.load_state_dict(torch.load(f"teacher{a.teacher}.pt")); teacher.eval()
def batch(step, g, bs=256):
    c = torch.randint(10, (bs,), generator=g); l = torch.randint(L, (bs,), generator=g)
    z = mu[c, l] + a.tau * sd[c, l] * torch.randn(bs, mu.shape[-1], generator=g)
    if a.mix > 0:
        c2 = torch.randint(10, (bs,), generator=g); l2 = torch.randint(L, (bs,), generator=g)
        lam = torch.rand(bs, 1, generator=g); use = (torch.rand(bs, 1, generator=g) < a.mix).float()
        z = z * (1 - use * lam) + use * lam * mu[c2, l2]
    with torch.no_grad():
        x = norm((dec(z) + 1) / 2)
        if teacher is None: return x, c
        return x, F.softmax(teacher(x) / a.T, 1)
m = convnet(a.student); t = time.time()
train(m, batch, a.steps)
print(json.dumps({**vars(a), "acc": test(m), "sec": round(time.time() - t)}), flush=True)
