"""Tests of the yamux multiplexer."""
