"""Portunus server: the control plane of the Portunus port forwarder."""

__version__ = "0.9.0"
