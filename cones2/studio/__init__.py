"""cones2 studio: a local web app to browse the library, draw a layout and render.

``cones2 studio`` serves one page on 127.0.0.1 (:mod:`.server`); the page's state goes
through :mod:`.adapter`, the only module that calls the render API; :mod:`.library`
reads the catalogue and pulls from remotes; :mod:`.jobs` queues renders and pulls.
"""

from .server import Studio, StudioServer, make_server, serve_in_thread

__all__ = ["Studio", "StudioServer", "make_server", "serve_in_thread"]
