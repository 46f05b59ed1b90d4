"""Latent action models: encoders, quantizers, decoders and the LatentActionModel that joins them."""
