"""KubeRDE: remote development environments behind NAT, reached through one gateway."""

__version__ = "0.1.0"
