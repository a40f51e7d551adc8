"""Speech tokens from a trained decoder: block diffusion, the AR/MTP baselines, streaming, sharded sampling."""
