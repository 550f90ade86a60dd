"""The loader side: a .d3 file as torch samples.

``representation`` (priors + decoders of a container), ``noise`` (counter-based
Gaussian noise), ``dataset`` (D3Dataset, D3Stream) and ``export`` (sample grids,
ImageFolder / webdataset export).
"""
