"""Renderers: text (rich) for people, JSON for machines, CI formats for findings."""
