"""unidm: one library for diffusion and flow models around one denoiser contract ``D(x, sigma) ~ E[x0 | x]``."""

__version__ = "0.1.0"
