"""Tools for testing applications built on linkvault: never imported by the product path.

The sandbox OAuth2 provider, the in-memory store, a fake clock and an in-thread API runner
live here, so a user's own tests can drive linkvault end to end without a real provider.
"""
