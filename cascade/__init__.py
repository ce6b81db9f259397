"""cascade: image generation and upscaling with a cascade of diffusion models (SR3, ADM)."""
