"""Hydra configs, shipped inside the package as sso_lightning.conf."""
