import sys, json
from common import *
torch.set_num_threads(1)
n, steps = int(sys.argv[1]), int(sys.argv[2])
xs, ys = subset(n) if n else (X, Y)
m = convnet(32); t=time.time(); train(m, real_batches(xs, ys), steps)
print(json.dumps({"real_n": n, "steps": steps, "acc": test(m), "sec": round(time.time()-t)}), flush=True)
