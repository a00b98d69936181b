"""The hospital side of a federation."""

from alliance.site.agent import Site

__all__ = ["Site"]
