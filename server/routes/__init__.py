"""One router per resource: classify, memory, templates, ops (health and metrics), and the page."""

from . import classify, memory, ops, page, templates

__all__ = ["classify", "memory", "ops", "page", "templates"]
