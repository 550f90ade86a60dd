"""The tiny `d3 pack` settings shared by tools/bench_scale.py and tools/bench_jpeg.py.

Their own module, so that bench_scale (which hands ``--jpeg`` to bench_jpeg) and bench_jpeg
(which packs with these settings) do not import each other.
"""

# `d3 pack` settings (the names of d3fmt.distill.settings.pack_config); warmup 0: trajectory matching throughout.
SETTINGS = dict(iterations=2, num_experts=1, expert_epochs=1, syn_steps=1, match_epochs=1, convnet_width=8,
                mmd_samples=2, mmd_real=4, label_sample=5, budget=10.0, decoder_width=32, latents_per_class=1,
                warmup=0.0, checkpoint_every=0)
