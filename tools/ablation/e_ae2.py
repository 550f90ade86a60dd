# AE as before, but keep the encoder: priors for several L, and per-image latents
import sys
from common import *
import d3fmt.distill.autoencoder as A
from d3fmt.models.decoder import DecoderConfig, build_decoder
torch.set_num_threads(1)
fam, k, z, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
tag = f"{fam}{k}_z{z}_s{steps}"
cap = {}
orig = A._fit_priors
def spy(encoder, x, y, K, lpc, cfg, g):
    cap["enc"] = encoder; return orig(encoder, x, y, K, lpc, cfg, g)
A._fit_priors = spy
cfg = DecoderConfig(family=fam, z_dim=z, channels=1, image_size=28, width=k)
torch.manual_seed(0); dec = build_decoder(cfg.to_json())
xt = to01(X) * 2 - 1; yt = torch.from_numpy(Y); t = time.time()
r = A.pretrain(xt, yt, 10, dec, 10, A.AutoencoderConfig(steps=steps), seed=0)
print("recon", r.reconstruction, "sec", time.time() - t, flush=True)
m, s2 = A._encode(cap["enc"].eval(), xt)
torch.save({"cfg": cfg.to_json(), "state": r.decoder_state, "m": m, "s2": s2}, f"ae2_{tag}.pt")
print("saved", flush=True)
