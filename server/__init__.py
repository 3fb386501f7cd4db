"""The classify service: a thin FastAPI layer over `vmem.VisualMemory`.

    from server import Settings, create_app
    app = create_app(Settings(memory="./memory", api_key="..."))
"""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
