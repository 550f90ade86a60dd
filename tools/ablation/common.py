import numpy as np, torch, time, math, io, zstandard
import torch.nn.functional as F
from d3fmt.models.convnet import ConvNet, ConvNetConfig
from d3fmt.augment import DSAParams, dsa
D = np.load("fmnist.npz")
X, Y, TX, TY = D["x"], D["y"], D["tx"], D["ty"]
MEAN, STD = float(X.mean()/255), float(X.std()/255)
def norm(x01): return (x01 - MEAN) / STD
def to01(xu8): return torch.from_numpy(np.ascontiguousarray(xu8)).float().div_(255)
TXn = norm(to01(TX))
def convnet(width=32, **kw): return ConvNet(ConvNetConfig(channels=1, num_classes=10, image_size=28, width=width, **kw))
@torch.no_grad()
def test(model, bs=1000):
    model.eval(); c=0
    for i in range(0, len(TY), bs):
        c += int((model(TXn[i:i+bs]).argmax(1).numpy() == TY[i:i+bs]).sum())
    return c/len(TY)
def train(model, batch_fn, steps, lr=0.01, bs=256, wd=5e-4, aug=True, seed=0, log=0):
    """batch_fn(step, g) -> (x normalised [b,1,28,28], target int64 [b] or soft [b,10])"""
    g = torch.Generator().manual_seed(seed); torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < steps//2 else 0.1)
    p = DSAParams(); model.train()
    for s in range(steps):
        x, t = batch_fn(s, g)
        if aug: x = dsa(x, p, generator=g)
        out = model(x)
        loss = F.cross_entropy(out, t) if t.dtype == torch.int64 else -(t * F.log_softmax(out, 1)).sum(1).mean()
        opt.zero_grad(); loss.backward(); opt.step(); sched.step()
        if log and (s+1) % log == 0: print(f"  step {s+1} loss {loss.item():.3f} acc {test(model):.4f}", flush=True); model.train()
    return model
def real_batches(xu8, y, bs=256):
    xn = norm(to01(xu8)); yt = torch.from_numpy(np.asarray(y, np.int64)); n = len(yt)
    state = {"perm": None, "pos": n}
    def fn(step, g):
        if state["pos"] + bs > n:
            state["perm"] = torch.randperm(n, generator=g); state["pos"] = 0
        idx = state["perm"][state["pos"]:state["pos"]+bs]; state["pos"] += bs
        return xn[idx], yt[idx]
    return fn
def subset(n_per_class, seed=0):
    rng = np.random.default_rng(seed)
    idx = np.sort(np.concatenate([rng.permutation(np.flatnonzero(Y == c))[:n_per_class] for c in range(10)]))
    return X[idx], Y[idx]
