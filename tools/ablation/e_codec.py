# approximate codec competitors: train ConvNet-32 on a random subset, decoded as the codec would
import sys, json
from common import *
from PIL import Image
torch.set_num_threads(1)
def down(xu8, side=14, bits=4):
    out = []
    for im in xu8[:, 0]:
        s = np.asarray(Image.fromarray(im).resize((side, side), Image.BILINEAR))
        q = (s >> (8 - bits)).astype(np.float32); s = (q * 255 / (2**bits - 1)).round().astype(np.uint8)
        out.append(np.asarray(Image.fromarray(s).resize((28, 28), Image.BILINEAR)))
    return np.stack(out)[:, None]
def post(xu8, bits=3):
    q = (xu8 >> (8 - bits)).astype(np.float32); return (q * 255 / (2**bits - 1)).round().astype(np.uint8)
codec, n, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
xs, ys = subset(n)
xs = {"down14": lambda a: down(a), "post3": lambda a: post(a, 3), "raw": lambda a: a}[codec](xs)
m = convnet(32); t = time.time()
train(m, real_batches(xs, ys), steps)
acc = test(m)
print(json.dumps({"codec": codec, "n": n, "steps": steps, "acc": acc, "sec": round(time.time()-t)}), flush=True)
