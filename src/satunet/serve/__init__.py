"""`satunet serve`: live segmentation of GeoTIFF scenes on a web map (FastAPI, rio-tiler, Leaflet).

Needs the ``serve`` extra: ``pip install 'satunet[serve]'`` (fastapi, uvicorn, rio-tiler).
"""

from satunet.serve.app import create_app, run_server
from satunet.serve.cache import Busy, TileCache, WorkerPool
from satunet.serve.service import Limits, TileService, build_service
from satunet.serve.tiles import Scene, TileError, TileRenderer, ground_resolution, segment_zooms

__all__ = [
    "Busy",
    "Limits",
    "Scene",
    "TileCache",
    "TileError",
    "TileRenderer",
    "TileService",
    "WorkerPool",
    "build_service",
    "create_app",
    "ground_resolution",
    "run_server",
    "segment_zooms",
]
