"""alpaca-tunnel: a multi-peer, multi-path UDP VPN with forwarders and duplicate-send."""

__version__ = "7.1.0"

__all__ = ["__version__"]
