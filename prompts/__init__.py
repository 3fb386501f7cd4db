"""Prompt templates for the VLM re-ranker, stored as YAML files and chosen by name.

>>> from prompts import default_registry
>>> default_registry().get("neighbors-v1").ref
'neighbors-v1@1'
"""

from ._registry import (
    BUILTIN_DIR,
    DEFAULT_TEMPLATE,
    TEMPLATES_DIR_ENV,
    TemplateEntry,
    TemplateRegistry,
    default_registry,
)
from ._template import (
    FIELD_VARIABLES,
    MAX_TEMPLATE_BYTES,
    MissingVariablesError,
    PromptTemplate,
    TemplateError,
    TemplateLoadError,
    ToolName,
    UnknownTemplateError,
    load_template_file,
)

__all__ = [
    "BUILTIN_DIR",
    "DEFAULT_TEMPLATE",
    "FIELD_VARIABLES",
    "MAX_TEMPLATE_BYTES",
    "TEMPLATES_DIR_ENV",
    "MissingVariablesError",
    "PromptTemplate",
    "TemplateEntry",
    "TemplateError",
    "TemplateLoadError",
    "TemplateRegistry",
    "ToolName",
    "UnknownTemplateError",
    "default_registry",
    "load_template_file",
]
