import numpy as np, gzip
D="/usr/share/datasets/fashion-mnist/"
def idx(p):
    with gzip.open(D+p) as f: b=f.read()
    if 'labels' in p: return np.frombuffer(b,np.uint8,offset=8).astype(np.int64)
    return np.frombuffer(b,np.uint8,offset=16).reshape(-1,1,28,28)
np.savez("fmnist.npz", x=idx("train-images-idx3-ubyte.gz"), y=idx("train-labels-idx1-ubyte.gz"),
         tx=idx("t10k-images-idx3-ubyte.gz"), ty=idx("t10k-labels-idx1-ubyte.gz"))
