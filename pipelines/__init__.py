"""Diffusers-style pipelines for the continuous U-Net (one pipeline per file), installed as
`diffusers_cunet.pipelines`."""

__all__: list[str] = []
