"""Shipped model configs (data only; see engines/configs/README.md)."""
