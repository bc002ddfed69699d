"""Model card templates (installed as `diffusers_cunet.model_cards`)."""
