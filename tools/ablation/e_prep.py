# train teachers of several widths on the full data, and an AE (decoder small, z) ; save
import sys
from common import *
from d3fmt.models.decoder import DecoderConfig, build_decoder
from d3fmt.distill.autoencoder import pretrain, AutoencoderConfig
torch.set_num_threads(1)
what = sys.argv[1]
if what == "teacher":
    w, steps = int(sys.argv[2]), int(sys.argv[3])
    m = convnet(w); t=time.time()
    train(m, real_batches(X, Y), steps, lr=0.01, log=steps//4)
    print("teacher", w, "params", sum(p.numel() for p in m.parameters()), "acc", test(m), "sec", time.time()-t, flush=True)
    torch.save(m.state_dict(), f"teacher{w}.pt")
else:
    fam, k, z, L, steps = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    cfg = DecoderConfig(family=fam, z_dim=z, channels=1, image_size=28, width=k)
    torch.manual_seed(0); dec = build_decoder(cfg.to_json())
    print("decoder params", sum(p.numel() for p in dec.parameters()))
    xt = to01(X) * 2 - 1; yt = torch.from_numpy(Y)
    t = time.time()
    r = pretrain(xt, yt, 10, dec, L, AutoencoderConfig(steps=steps), seed=0)
    print("ae recon", r.reconstruction, "sec", time.time()-t, flush=True)
    torch.save({"cfg": cfg.to_json(), "state": r.decoder_state, "mu": r.mu, "logvar": r.logvar}, f"ae_{fam}{k}_z{z}_L{L}.pt")
