"""Action-centricity evaluation: how much latent actions tell about the real actions."""
