"""Shared utilities with no knowledge of vocoders: config resolvers, atomic files, the Hub, tracking."""
