"""Checking messages that already wait against new code: decoding and binding."""
