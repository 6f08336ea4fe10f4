"""Datasets, transforms, label names, the embedded phantom dataset and the VAE loader."""
