"""Evaluation, in one home: what the trainer's validation, the benchmarks and the solver searches score with.

- `distances`: the one FID / KID / precision-recall implementation, on features;
- `fashion_judge` (with its committed weights) and `fashion_scores`: Fashion-MNIST's feature network and scores;
- `digits`: the digit recogniser and feature network of the embedded digits;
- `held_out`: the held-out denoising error at fixed noise levels.
"""
