"""openlam: latent action models, from video episodes to action-centricity reports."""

__version__ = "0.1.0"
