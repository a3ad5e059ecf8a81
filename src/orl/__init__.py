"""ORL: unsupervised object-level representation learning from scene images, as a Snakemake workflow."""

__version__ = "0.1.0"
