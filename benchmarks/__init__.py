"""Side-by-side benchmarks of the continuous U-Net against diffusers' `UNet2DModel`."""
